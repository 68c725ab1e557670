#!/usr/bin/env node
// Command line of the edgecl JS client (Node): predict with a bundle and add classes to its prototype head.

import { writeFile } from "node:fs/promises";
import { delimiter } from "node:path";
import { parseArgs } from "node:util";

import { EdgeclError } from "./lib/errors.mjs";
import { openBundle, readImageFiles, readPublicKeyFile } from "./lib/node.mjs";
import { writeNpy } from "./lib/npy.mjs";

const USAGE = `usage: node cli.mjs COMMAND ...

Reads edgecl bundles (format 2 or 3, prototype_cosine head) with onnxruntime-node and prints JSON.
IMAGES are files: .npy arrays (uint8 (N, H, W, C) 0..255 or float32 0..1, C in 1, 3, 4, RGB order) or PNG and
JPEG files, read as Python reads them (EXIF orientation applied, transparency composited on white).

commands:
  info BUNDLE [--prototypes]       classes, counts, journal position, ONNX metadata (and raw prototypes)
  predict BUNDLE IMAGES... [--top-k K] [--unknown auto|THRESHOLD] [--json]
                                   top-k classes of each image and its unknown score (higher: less like
                                   any class the bundle knows); --unknown rejects images scoring above the
                                   bundle's calibrated threshold (auto) or THRESHOLD: their label is null;
                                   --json prints JSON lines as Python's \`edgecl predict --json\`:
                                   {image, label, unknown_score, top_k: [{class, score}]}
  add-class BUNDLE NAME IMAGES... --dry-run
                                   learn (or extend) class NAME from the images as the Python runtime
                                   would, and print the resulting prototype and count; --dry-run is
                                   required: this client does not write bundles
  preprocess BUNDLE IMAGES... OUT.npy
                                   write the normalised NCHW float32 model input (for checks)

options: --no-verify (skip sha256 checks of the bundle files), --threads N (onnxruntime intra-op threads),
  --public-key FILE (repeatable; default: the files in $EDGECL_PUBLIC_KEY, separated by '${delimiter}'): trust
  only bundles and journal updates signed with one of these Ed25519 keys (PEM, as \`edgecl keygen\` writes
  KEY.pub); anything unsigned or signed by another key is refused (SignatureError)`;

const rows = (a, n, d) => Array.from({ length: n }, (_, i) => Array.from(a.subarray(i * d, (i + 1) * d)));

async function info(bundle, _args, opts) {
  const h = bundle.head;
  const out = {
    format_version: bundle.formatVersion, head: h.constructor.kind, classes: bundle.classes, counts: h.counts,
    feature_dim: h.dim, seq: bundle.seq, replayed: bundle.journal.lagging.length,
    discarded_bytes: bundle.journal.discarded, metadata: bundle.metadata, signed_by: bundle.signedBy,
  };
  if (opts.prototypes) out.prototypes = rows(h.prototypes, h.numClasses, h.dim);
  return out;
}

/** --unknown: "auto", a number, or absent (null: no rejection). */
function unknownOption(value) {
  if (value === undefined || value === "auto") return value ?? null;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(value)) throw new EdgeclError(`--unknown: expected 'auto' or a number, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** One name per image: the file, or FILE[i] for each image of a .npy file of several (as the Python CLI). */
async function imageNames(files) {
  const names = [];
  for (const f of files) {
    const n = f.toLowerCase().endsWith(".npy") ? (await readImageFiles([f])).length : 1;
    names.push(...(n === 1 ? [f] : Array.from({ length: n }, (_, i) => `${f}[${i}]`)));
  }
  return names;
}

/** Python's `edgecl predict --json` lines: {image, label, unknown_score, top_k: [{class, score}]}. */
async function jsonLines(preds, files) {
  const names = await imageNames(files);
  return preds.map((p, i) => JSON.stringify({
    image: names[i], label: p.label, unknown_score: p.unknown_score,
    top_k: p.top_k.map(([c, s]) => ({ class: c, score: s })),
  })).join("\n");
}

async function predict(bundle, files, opts) {
  const images = await readImageFiles(files);
  const unknown = unknownOption(opts.unknown);
  const preds = await bundle.predict(images, { topK: Number(opts["top-k"] || 1), unknown });
  if (opts.json) return { lines: await jsonLines(preds, files) };
  return { classes: bundle.classes, threshold: bundle.unknownThreshold(unknown), predictions: preds };
}

async function addClass(bundle, [name, ...files], opts) {
  if (!opts["dry-run"]) throw new EdgeclError("add-class needs --dry-run: this client computes the update but does not write bundles");
  const r = await bundle.addClass(name, await readImageFiles(files));
  return { ...r, dry_run: true, prototype: Array.from(bundle.head.prototype(r.index)), classes: bundle.classes, counts: bundle.head.counts };
}

async function preprocessCmd(bundle, args) {
  const [files, outFile] = [args.slice(0, -1), args[args.length - 1]];
  const images = await readImageFiles(files);
  const [c, h, w] = bundle.inputSize;
  await writeFile(outFile, writeNpy(bundle.preprocess(images), [images.length, c, h, w]));
  return { written: outFile, shape: [images.length, c, h, w] };
}

const COMMANDS = { info: [info, 0], predict: [predict, 1], "add-class": [addClass, 2], preprocess: [preprocessCmd, 2] };

/** The trusted public keys: --public-key files, else those named by EDGECL_PUBLIC_KEY (as the Python CLI). */
async function publicKeys(files = []) {
  const paths = files.length ? files : (process.env.EDGECL_PUBLIC_KEY || "").split(delimiter).filter(Boolean);
  return Promise.all(paths.map(readPublicKeyFile));
}

async function main(argv) {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true,
    options: {
      help: { type: "boolean", short: "h" }, "dry-run": { type: "boolean" }, prototypes: { type: "boolean" },
      "top-k": { type: "string" }, "no-verify": { type: "boolean" }, threads: { type: "string" },
      "public-key": { type: "string", multiple: true }, unknown: { type: "string" }, json: { type: "boolean" },
    },
  });
  const [cmd, dir, ...rest] = positionals;
  if (values.help || !COMMANDS[cmd] || !dir || rest.length < COMMANDS[cmd][1]) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  const keys = await publicKeys(values["public-key"]);
  const bundle = await openBundle(dir, { verify: !values["no-verify"], threads: Number(values.threads || 0), publicKeys: keys });
  const out = await COMMANDS[cmd][0](bundle, rest, values);
  process.stdout.write((out.lines ?? JSON.stringify(out)) + "\n");
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => {
  const known = err instanceof EdgeclError;
  process.stderr.write(`error: ${known ? `${err.name}: ${err.message}` : err.stack}\n`);
  process.exitCode = known ? 1 : 3;
});
