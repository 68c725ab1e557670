// An edgecl bundle with a prototype_cosine head: read, verify, replay the journal, predict, learn classes.
//
// Environment-free: files come through an injected `readFile(name) -> Promise<Uint8Array | null>` (null: absent),
// the onnxruntime binding (onnxruntime-node or onnxruntime-web) is passed in as `ort`, and sha256 is injected
// (default WebCrypto). lib/node.mjs wires these up for Node.

import { canonicalManifest } from "./canonical.mjs";
import { CorruptBundleError, IncompatibleBundleError, InvalidInputError, MissingFileError, TamperedFileError } from "./errors.mjs";
import { readCommitted, toHex, webSha256 } from "./journal.mjs";
import { PrototypeHead } from "./head.mjs";
import { className } from "./names.mjs";
import { parseNpz } from "./npz.mjs";
import { readMetadataProps } from "./onnxmeta.mjs";
import { preprocess } from "./preprocess.mjs";
import { parseSafetensors } from "./safetensors.mjs";
import { importPublicKeys, verifyManifest, verifyRecords } from "./signing.mjs";
import { scoreName, unknownScores, unknownThreshold } from "./unknown.mjs";

export const FORMAT_VERSIONS = [2, 3];
const DTYPE_NAMES = { float32: "F32", float64: "F64", int64: "I64", uint64: "U64", F32: "F32", F64: "F64", I64: "I64", U64: "U64" };
const BATCH = 64;

function checkManifest(m) {
  if (m === null || typeof m !== "object" || m.format !== "edgecl-bundle") throw new CorruptBundleError("manifest.json: not an edgecl bundle manifest (format != 'edgecl-bundle')");
  if (!FORMAT_VERSIONS.includes(m.format_version)) {
    throw new IncompatibleBundleError(`bundle format_version ${m.format_version}; this client reads ${FORMAT_VERSIONS.join(", ")}`);
  }
  if (m.head?.kind !== PrototypeHead.kind) {
    throw new IncompatibleBundleError(`head kind ${JSON.stringify(m.head?.kind)}: this client learns only ${PrototypeHead.kind} heads`);
  }
  const headInputs = m.model?.head_inputs;
  if (m.format_version >= 3 && headInputs !== undefined && JSON.stringify(headInputs) !== '["prototypes"]') {
    throw new IncompatibleBundleError(`model.head_inputs ${JSON.stringify(headInputs)}: a prototype_cosine model takes ["prototypes"]`);
  }
  for (const f of ["classes", "head", "base", "journal", "preprocess", "files"]) {
    if (!(f in m)) throw new CorruptBundleError(`manifest.json lacks field '${f}'`);
  }
}

/** Head-file arrays: safetensors (format 3) or a numpy.savez archive (format 2), checked against `spec`. */
function parseHeadFile(name, bytes, spec) {
  const arrays = name.endsWith(".safetensors") ? parseSafetensors(bytes, name).tensors : parseNpz(bytes, name);
  for (const key of new Set([...Object.keys(spec || {}), ...Object.keys(arrays)])) {
    if (key.startsWith("__edgecl_")) continue;
    const a = arrays[key], want = spec?.[key];
    if (!a || !want) throw new CorruptBundleError(`${name}: array ${key} is ${a ? "not described by" : "missing but named by"} the manifest`);
    if (DTYPE_NAMES[a.dtype] !== DTYPE_NAMES[want.dtype] || JSON.stringify(a.shape) !== JSON.stringify(want.shape)) {
      throw new CorruptBundleError(`${name}: array ${key} is ${a.dtype} ${JSON.stringify(a.shape)}, the manifest says ${want.dtype} ${JSON.stringify(want.shape)}`);
    }
  }
  return arrays;
}

/** (head, classes) after one journal record, as edgecl_runtime.store.apply (strict). */
export function applyRecord(head, classes, rec) {
  if (rec.op === "add") {
    const i = classes.indexOf(rec.name);
    const next = head.withExamples(i < 0 ? null : i, rec.rows.data, rec.rows.k);
    return [next, i < 0 ? [...classes, rec.name] : classes];
  }
  const i = classes.indexOf(rec.name);
  if (i < 0) throw new InvalidInputError(`no class named ${JSON.stringify(rec.name)} to remove`);
  if (classes.length === 1) throw new InvalidInputError(`cannot remove ${JSON.stringify(rec.name)}: a bundle needs at least one class`);
  return [head.withoutClass(i), classes.filter((_, j) => j !== i)];
}

function replay(head, classes, records, where) {
  for (const rec of records) {
    try {
      [head, classes] = applyRecord(head, classes, rec);
    } catch (err) {
      throw new CorruptBundleError(`${where}: cannot replay update ${rec.seq} (${rec.op} ${JSON.stringify(rec.name)}): ${err.message}`);
    }
  }
  return [head, classes];
}

/** The manifest's `checksum` against its content (Python's manifest_checksum). */
async function checkSeal(text, manifest, sha256) {
  const actual = toHex(await sha256(new TextEncoder().encode(canonicalManifest(text))));
  if (actual !== manifest.checksum) throw new TamperedFileError("manifest.json: its content does not match its checksum field (edited or corrupt)");
}

/** The model's own metadata_props (format 3) against the manifest: format version, head kind, preprocessing. */
export function checkModelMetadata(manifest, meta, where = "model") {
  if (manifest.format_version < 3) return;
  const bad = (msg) => new CorruptBundleError(`${where}: metadata_props ${msg}`);
  if (meta["edgecl.format_version"] !== String(manifest.format_version)) {
    throw bad(`edgecl.format_version is ${JSON.stringify(meta["edgecl.format_version"])}, the manifest says ${manifest.format_version}`);
  }
  if (meta["edgecl.head_kind"] !== manifest.head.kind) throw bad(`edgecl.head_kind is ${JSON.stringify(meta["edgecl.head_kind"])}, the manifest says ${manifest.head.kind}`);
  if (meta["edgecl.preprocess"] !== undefined) {
    let pre;
    try { pre = JSON.parse(meta["edgecl.preprocess"]); } catch { throw bad("edgecl.preprocess is not JSON"); }
    for (const key of ["input_size", "mean", "std"]) {
      if (JSON.stringify(pre[key]) !== JSON.stringify(manifest.preprocess[key])) throw bad(`edgecl.preprocess.${key} differs from the manifest's preprocess.${key}`);
    }
  }
}

async function readVerified(readFile, name, manifest, sha256, verify) {
  const bytes = await readFile(name);
  if (bytes === null) throw new MissingFileError(`bundle file missing: ${name}`);
  const want = manifest.files[name];
  if (verify && want) {
    if (bytes.length !== want.bytes) throw new TamperedFileError(`${name}: ${bytes.length} bytes, the manifest records ${want.bytes}`);
    if (toHex(await sha256(bytes)) !== want.sha256) throw new TamperedFileError(`${name}: sha256 differs from the manifest (edited or damaged)`);
  }
  return bytes;
}

/** Refuse journal records after the commit point that no trusted key signed (nothing to check without keys). */
async function checkRecordSignatures(journalBytes, j, manifest, trusted, sha256) {
  if (!trusted) return;
  const { bytes: start, digest: prevDigest, file } = manifest.journal;
  await verifyRecords(journalBytes, j.lagging, { start, prevDigest, trusted, sha256, where: file });
}

/** Open a bundle. `readFile(name)`: bundle file bytes or null; `ort`: an onnxruntime binding;
 * `verify`: check file sizes and sha256 against the manifest (default true); `publicKeys`: the Ed25519 public
 * key(s) (PEM, base64 or 32 raw bytes) to trust: then an unsigned manifest or journal update, or one signed by
 * another key, is a SignatureError (as Python's Bundle.load(public_key=...)); none: signatures are not checked. */
export async function loadBundle({ readFile, ort, sha256 = webSha256, verify = true, sessionOptions = {}, publicKeys = [] }) {
  const keys = Array.isArray(publicKeys) ? publicKeys : [publicKeys]; // one key, or a list of them
  const trusted = keys.length ? await importPublicKeys(keys) : null;
  const raw = await readFile("manifest.json");
  if (raw === null) throw new MissingFileError("bundle manifest.json is missing");
  let text, manifest;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    manifest = JSON.parse(text);
  } catch (err) {
    throw new CorruptBundleError(`manifest.json is not UTF-8 JSON (${err.message})`);
  }
  checkManifest(manifest);
  if (verify) await checkSeal(text, manifest, sha256);
  if (trusted) await verifyManifest(text, manifest, trusted);
  const headFile = manifest.head.file;
  const arrays = parseHeadFile(headFile, await readVerified(readFile, headFile, manifest, sha256, verify), manifest.head.arrays);
  const dim = arrays.prototypes?.shape?.[1];
  let head = PrototypeHead.fromArrays(arrays, manifest.classes.length, dim);
  const journalBytes = await readFile(manifest.journal.file);
  const j = await readCommitted(journalBytes, manifest, { sha256, where: manifest.journal.file });
  await checkRecordSignatures(journalBytes, j, manifest, trusted, sha256);
  let classes = manifest.classes.slice();
  [head, classes] = replay(head, classes, j.lagging, manifest.journal.file);
  const modelFile = manifest.format_version >= 3 ? manifest.model.file : manifest.backbone.file;
  const modelBytes = await readVerified(readFile, modelFile, manifest, sha256, verify);
  const metadata = readMetadataProps(modelBytes);
  checkModelMetadata(manifest, metadata, modelFile);
  const session = ort ? await ort.InferenceSession.create(modelBytes, sessionOptions) : null;
  return new Bundle({ manifest, head, classes, seq: j.seq, journal: j, session, ort, metadata });
}

function topK(scores, n, C, k) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const row = scores.subarray(i * C, (i + 1) * C);
    const order = Array.from({ length: C }, (_, c) => c).sort((a, b) => row[b] - row[a] || a - b);
    out.push(order.slice(0, Math.min(k, C)).map((c) => [c, row[c]]));
  }
  return out;
}

export class Bundle {
  constructor({ manifest, head, classes, seq, journal, session, ort, metadata }) {
    Object.assign(this, { manifest, head, classes, seq, journal, session, ort, metadata });
  }

  get formatVersion() { return this.manifest.format_version; }
  /** Key id of the manifest's signature (verified only when loadBundle was given publicKeys), or null. */
  get signedBy() { return this.manifest.signature?.key_id ?? null; }
  get inputSize() { return this.manifest.preprocess.input_size; }

  /** Images ({data, height, width, channels}[]) -> normalised NCHW Float32Array. */
  preprocess(images) {
    const p = this.manifest.preprocess;
    return preprocess(images, p.input_size, p.mean, p.std);
  }

  async _runBatch(x, n) {
    const [c, h, w] = this.inputSize, T = this.ort.Tensor;
    if (this.formatVersion >= 3) {
      const { inputs = ["images", "prototypes"], outputs = ["features", "scores"] } = this.manifest.model;
      const feeds = { [inputs[0]]: new T("float32", x, [n, c, h, w]), prototypes: new T("float32", this.head.normalized(), [this.head.numClasses, this.head.dim]) };
      const out = await this.session.run(feeds);
      return { features: out[outputs[0]].data, scores: out[outputs[1]].data };
    }
    const bb = this.manifest.backbone;
    const out = await this.session.run({ [bb.input_name]: new T("float32", x, [n, c, h, w]) });
    const features = out[bb.output_name].data;
    return { features, scores: this.head.scores(features, n) };
  }

  /** {features (n*F), scores (n*C), n} of images, run in batches of 64 like the Python runtime. */
  async run(images) {
    if (!this.session) throw new InvalidInputError("this bundle was opened without an onnxruntime binding");
    const x = this.preprocess(images), n = images.length, [c, h, w] = this.inputSize, per = c * h * w;
    const F = this.head.dim, C = this.head.numClasses;
    const features = new Float32Array(n * F), scores = new Float32Array(n * C);
    for (let i = 0; i < n; i += BATCH) {
      const m = Math.min(BATCH, n - i);
      const out = await this._runBatch(x.slice(i * per, (i + m) * per), m);
      features.set(out.features, i * F);
      scores.set(out.scores, i * C);
    }
    return { features, scores, n };
  }

  /** Top-k classes per image: [{index, label, score, top_k: [[label, score], ...], unknown_score, unknown}].
   * Every image gets an unknown score (higher: less like any class the bundle knows; lib/unknown.mjs);
   * `unknown`: "auto" (the bundle's calibrated threshold), a number, or null (no rejection): an image scoring
   * above the threshold is rejected, its `label` null (`index` and `top_k` still name the nearest classes). */
  async predict(images, { topK: k = 1, unknown = null } = {}) {
    if (!(Number.isInteger(k) && k >= 1)) throw new InvalidInputError(`top_k must be >= 1, got ${k}`);
    const threshold = unknownThreshold(this.manifest, unknown);
    const { features, scores, n } = await this.run(images);
    const u = unknownScores(this.manifest, this.head, features, scores, n);
    return topK(scores, n, this.classes.length, k).map((row, i) => {
      const rejected = threshold !== null && u[i] > threshold;
      return {
        index: row[0][0], label: rejected ? null : this.classes[row[0][0]], score: row[0][1],
        top_k: row.map(([c, s]) => [this.classes[c], s]), unknown_score: u[i], unknown: rejected,
      };
    });
  }

  /** The unknown score this bundle reports (manifest.unknown.score, else nearest_cosine). */
  get unknownScoreName() { return scoreName(this.manifest); }

  /** The unknown threshold predict(..., {unknown}) applies ("auto": the calibrated one, or IncompatibleBundleError). */
  unknownThreshold(unknown) { return unknownThreshold(this.manifest, unknown); }

  /** Add k feature rows (Float32Array k*F) to class `name` in memory (new class, or extend); as store.add_examples. */
  addFeatures(name, rows, k) {
    name = className(name);
    const i = this.classes.indexOf(name);
    this.head = this.head.withExamples(i < 0 ? null : i, rows, k);
    if (i < 0) this.classes = [...this.classes, name];
    const index = this.classes.indexOf(name);
    return { name, created: i < 0, examples_added: k, total_examples: this.head.counts[index], num_classes: this.classes.length, index };
  }

  /** Learn class `name` from images in memory (as Bundle.add_class computes it; nothing is written). */
  async addClass(name, images) {
    name = className(name);
    const { features, n } = await this.run(images);
    return this.addFeatures(name, features, n);
  }

  /** Forget class `name` in memory (as Bundle.remove_class computes it; nothing is written). */
  removeClass(name) {
    [this.head, this.classes] = applyRecord(this.head, this.classes, { op: "remove_class", name: className(name) });
  }
}
