// Signed bundles (docs/bundle-format.md "Signed bundles"): Ed25519 signatures over the manifest and the journal
// records after its snapshot point, checked as edgecl_runtime/signing.py checks them. One implementation for
// Node and browsers: WebCrypto's crypto.subtle (Ed25519 in Node >= 20, Chromium >= 137, Firefox >= 129, Safari >= 17).

import { pyJsonDumps } from "./canonical.mjs";
import { InvalidInputError, SignatureError } from "./errors.mjs";
import { fromHex, toHex, webSha256 } from "./journal.mjs";

export const ALG = "ed25519";
const ED25519 = { name: "Ed25519" };
const SPKI_PREFIX = "302a300506032b6570032100"; // DER SubjectPublicKeyInfo of an Ed25519 key, before its 32 raw bytes
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const PEM = /^-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]*)-----END PUBLIC KEY-----$/;
const PREFIX = 40; // journal record: magic, payload length, digest

const ascii = (text) => new TextEncoder().encode(text);
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/** WebCrypto, or a SignatureError saying where it exists. */
function subtle() {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new SignatureError("verifying signatures needs WebCrypto (crypto.subtle): Node >= 20, or a page served over https or from localhost");
  return s;
}

/** Bytes of strict base64 text (padded, no whitespace, as Python's b64decode(validate=True)), or null. */
export function fromBase64(text) {
  if (typeof text !== "string" || !BASE64.test(text)) return null;
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** The 32 raw bytes of an Ed25519 DER SubjectPublicKeyInfo, or null if `der` is not one. */
function fromSpki(der) {
  return der && der.length === 44 && toHex(der.subarray(0, 12)) === SPKI_PREFIX ? der.slice(12) : null;
}

/** The raw 32 bytes of an Ed25519 public key given as PEM text (SPKI, as `edgecl keygen` writes KEY.pub),
 * base64 text of the raw key, or raw bytes (Uint8Array). */
export function rawPublicKey(source) {
  if (source instanceof Uint8Array && source.length === 32) return source.slice();
  if (typeof source === "string") {
    const pem = PEM.exec(source.trim());
    const raw = pem ? fromSpki(fromBase64(pem[1].replace(/\s+/g, ""))) : fromBase64(source.trim());
    if (raw?.length === 32) return raw;
  }
  throw new InvalidInputError("not an Ed25519 public key: give a PEM public key (edgecl keygen's KEY.pub), "
    + "or its 32 raw bytes as a Uint8Array or base64 text");
}

/** 16 hex digits naming a public key: the sha256 of its raw bytes (signing.py key_id). */
export async function keyId(source) {
  return toHex(await webSha256(rawPublicKey(source))).slice(0, 16);
}

/** Trusted keys for verification: [{id, key}] (key: a WebCrypto CryptoKey) from PEM, base64 or raw keys. */
export async function importPublicKeys(sources) {
  return Promise.all(sources.map(async (source) => {
    const raw = rawPublicKey(source);
    let key;
    try {
      key = await subtle().importKey("raw", raw, ED25519, false, ["verify"]);
    } catch (err) {
      if (err instanceof SignatureError) throw err;
      throw new SignatureError(`this JavaScript engine cannot import Ed25519 keys (${err.message}): `
        + "verifying signatures needs Node >= 20, Chromium >= 137, Firefox >= 129 or Safari >= 17");
    }
    return { id: await keyId(raw), key };
  }));
}

/** Whether `sig` (bytes) is a valid Ed25519 signature of `message` by `key` (false on any malformed input). */
async function verifies(key, sig, message) {
  try {
    return await subtle().verify(ED25519, key, sig, message);
  } catch {
    return false;
  }
}

/** Refuse `entry` (a manifest `signature` or a record `sig`) unless it signs `message` with one of the `trusted`
 * keys ([{id, key}]); the errors of signing.py verify_entry. */
export async function verifyEntry(entry, message, where, trusted) {
  const isObject = entry !== null && typeof entry === "object" && !Array.isArray(entry);
  if (!isObject || ("alg" in entry ? entry.alg : ALG) !== ALG || typeof entry.sig !== "string") {
    throw new SignatureError(`${where} is not signed; this client only accepts bundles signed by its trusted keys`);
  }
  const signer = trusted.find((k) => k.id === entry.key_id);
  if (!signer) throw new SignatureError(`${where} is signed by key ${JSON.stringify(entry.key_id)}, which this client does not trust`);
  const sig = fromBase64(entry.sig);
  if (!sig || !(await verifies(signer.key, sig, message))) {
    throw new SignatureError(`${where}: the signature does not match (modified after signing)`);
  }
}

/** What the manifest's `signature` signs: "edgecl-manifest\0" + its canonical JSON without `checksum` and `signature`. */
export function manifestMessage(text) {
  return concat(ascii("edgecl-manifest\0"), ascii(pyJsonDumps(text, { drop: ["checksum", "signature"] })));
}

/** Refuse a manifest (its text and parsed value) that is not signed by one of the `trusted` keys. */
export async function verifyManifest(text, manifest, trusted, where = "manifest.json") {
  await verifyEntry(manifest.signature, manifestMessage(text), where, trusted);
}

/** What a record's `sig` signs (signing.py record_message): "edgecl-record\0", the previous record's digest, then
 * sha256 of the header without `sig` as Python's json.dumps(sort_keys=True) writes it, "\n" and the embeddings. */
export async function recordMessage(prevDigest, payload, sha256 = webSha256) {
  const nl = payload.indexOf(0x0a);
  const header = pyJsonDumps(new TextDecoder("ascii").decode(payload.subarray(0, nl)), { drop: ["sig"], compact: false });
  const inner = await sha256(concat(ascii(header + "\n"), payload.subarray(nl + 1)));
  return concat(ascii("edgecl-record\0"), fromHex(prevDigest), new Uint8Array(inner));
}

/** Refuse journal records (from journal.scan, in order) not signed by one of the `trusted` keys, as journal.py
 * verify_signatures does for the records after the snapshot point. `data`: the journal's bytes; the first record
 * starts at byte `start` and follows digest `prevDigest`; each ends at its `end`. */
export async function verifyRecords(data, records, { start, prevDigest, trusted, sha256 = webSha256, where = "journal" }) {
  for (const rec of records) {
    const message = await recordMessage(prevDigest, data.subarray(start + PREFIX, rec.end), sha256);
    await verifyEntry(rec.extra.sig, message, `${where}: update ${rec.seq} (${rec.op} ${JSON.stringify(rec.name)})`, trusted);
    [start, prevDigest] = [rec.end, rec.digest];
  }
}
