// The bundle journal (docs/bundle-format.md "Journal"): parse records and follow their sha256 chain.
//
// record = b"ECJ1" | payload length u32 LE | digest (32 bytes) | payload
// payload = one-line ASCII JSON header | b"\n" | float32 LE rows (k x F)
// digest = sha256(previous digest | payload), from genesis = sha256(b"edgecl-journal\0" + base.id).
// The records of one multi-record append are marked batch: [i, n] and are applied all or none.
// `sha256(bytes)` is injected (sync or async, returning 32 bytes): node:crypto in Node, WebCrypto elsewhere.

import { CorruptBundleError } from "./errors.mjs";
import { className } from "./names.mjs";

export const MAGIC = "ECJ1";
const PREFIX = 40;
const MAX_PAYLOAD = 2 ** 30;
const OPS = ["add", "remove_class"];

export const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
export const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));

/** sha256 through WebCrypto (browsers in secure contexts, Node >= 19). */
export async function webSha256(bytes) {
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
}

const concat = (a, b) => { const o = new Uint8Array(a.length + b.length); o.set(a); o.set(b, a.length); return o; };

export async function genesis(baseId, sha256 = webSha256) {
  return toHex(await sha256(concat(new TextEncoder().encode("edgecl-journal\0"), new TextEncoder().encode(baseId))));
}

function isMagic(data, p) {
  return data[p] === 0x45 && data[p + 1] === 0x43 && data[p + 2] === 0x4a && data[p + 3] === 0x31;
}

/** A record from its payload (throws Error on anything journal.py's _decode_payload refuses). */
export function decodePayload(payload) {
  const nl = payload.indexOf(0x0a);
  if (nl < 0) throw new Error("no header");
  const text = new TextDecoder("ascii").decode(payload.subarray(0, nl));
  if (!/^[\x00-\x7f]*$/.test(text)) throw new Error("header is not ASCII");
  const h = JSON.parse(text);
  const body = payload.subarray(nl + 1);
  if (h === null || typeof h !== "object" || Array.isArray(h) || !OPS.includes(h.op) || typeof h.class !== "string"
      || !Number.isInteger(h.seq) || typeof h.id !== "string" || typeof h.time !== "string") {
    throw new Error(`bad header ${text}`);
  }
  if (className(h.class) !== h.class) throw new Error(`class name ${JSON.stringify(h.class)} is not in normal form`);
  let rows = null;
  if ("shape" in h) {
    const s = h.shape;
    if (!Array.isArray(s) || s.length !== 2 || !s.every(Number.isInteger) || s[0] < 1 || 4 * s[0] * s[1] !== body.length) {
      throw new Error(`embedding shape ${JSON.stringify(s)} does not match ${body.length} bytes`);
    }
    const copy = body.slice();
    rows = { k: s[0], dim: s[1], data: new Float32Array(copy.buffer, 0, s[0] * s[1]) };
  } else if (body.length) {
    throw new Error("unexpected data after the header");
  }
  const extra = Object.fromEntries(Object.entries(h).filter(([k]) => !["seq", "op", "class", "id", "time", "shape"].includes(k)));
  return { seq: h.seq, op: h.op, name: h.class, id: h.id, time: h.time, rows, extra };
}

async function checkRecord(data, pos, prevDigest, prevSeq, sha256, inBatch) {
  if (data.length - pos < PREFIX) return { problem: "incomplete record prefix" };
  const n = new DataView(data.buffer, data.byteOffset + pos + 4, 4).getUint32(0, true);
  if (!isMagic(data, pos) || n > MAX_PAYLOAD) return { problem: "bad record marker" };
  const payload = data.subarray(pos + PREFIX, pos + PREFIX + n);
  if (payload.length < n) return { problem: "incomplete record" };
  const digest = toHex(data.subarray(pos + 8, pos + PREFIX));
  if (toHex(await sha256(concat(fromHex(prevDigest), payload))) !== digest) return { problem: "digest mismatch" };
  let rec;
  try {
    rec = decodePayload(payload);
  } catch (err) {
    return { problem: `unreadable record (${err.message})` };
  }
  if (rec.seq !== prevSeq + 1) return { problem: `sequence number ${rec.seq} after ${prevSeq}` };
  const problem = batchProblem(rec, inBatch !== null, inBatch || 0);
  if (problem) return { problem };
  return { rec: { ...rec, digest }, next: pos + PREFIX + n };
}

/** Why rec cannot follow the records read so far as far as multi-record batches go ("" if it can):
 * records of one append are marked batch: [i, n] and apply all or none (journal.py _batch_problem). */
function batchProblem(rec, open, done) {
  const b = rec.extra.batch;
  if (b === undefined) return open ? "a record outside the open batch" : "";
  if (!(Array.isArray(b) && b.length === 2 && b.every(Number.isInteger) && b[0] >= 1 && b[0] <= b[1])) {
    return `bad batch marker ${JSON.stringify(b)}`;
  }
  const expected = open ? done + 1 : 1;
  return b[0] === expected ? "" : `batch record ${b[0]} where ${expected} was due`;
}

/** A batch cut short: none of it is applied, its bytes become the discarded tail (journal.py _drop_open_batch). */
function dropOpenBatch(out, batch, size) {
  const done = out.records.length - batch.count;
  out.records.length = batch.count;
  Object.assign(out, { end: batch.end, digest: batch.digest, seq: batch.seq, discarded: size - batch.pos });
  out.problem = `incomplete batch of updates at byte ${out.end} (${done} records)${out.problem ? `, then ${out.problem}` : ""}`;
}

/** Whether a valid record chained to the damaged record at pos follows it (then that one was complete:
 * corruption, not a torn write), as journal.py's _followed_by_chain decides. */
async function followedByChain(data, pos, prevDigest, sha256, limit = 1000) {
  const stored = data.length - pos >= PREFIX ? data.subarray(pos + 8, pos + PREFIX) : null;
  let q = pos;
  for (let i = 0; i < limit; i++) {
    q = data.indexOf(0x45, q + 1);
    while (q >= 0 && !isMagic(data, q)) q = data.indexOf(0x45, q + 1);
    if (q < 0 || data.length - q < PREFIX) return false;
    const n = new DataView(data.buffer, data.byteOffset + q + 4, 4).getUint32(0, true);
    const payload = data.subarray(q + PREFIX, q + PREFIX + n);
    if (n > MAX_PAYLOAD || payload.length < n) continue;
    const digest = toHex(data.subarray(q + 8, q + PREFIX));
    const actual = await sha256(concat(fromHex(prevDigest), data.subarray(pos + PREFIX, q)));
    for (const d of [stored, actual]) {
      if (d && d.length && toHex(await sha256(concat(d, payload))) === digest) return true;
    }
  }
  return false;
}

/** Records of journal bytes `data` (read from byte `start` of the file), chained from `startDigest`/`startSeq`.
 * Stops at the first incomplete or invalid record: what follows is `discarded` (a torn write) unless a later
 * valid record chains from it, which is a CorruptBundleError; a multi-record append cut short is discarded
 * whole. Each record gets `end` (file offset after it). */
export async function scan(data, { start = 0, startDigest, startSeq, sha256 = webSha256, where = "journal" }) {
  const out = { records: [], end: start, digest: startDigest, seq: startSeq, discarded: 0, problem: "" };
  let pos = 0, batch = null; // batch: the state before an open multi-record append
  while (pos < data.length) {
    const inBatch = batch ? out.records.length - batch.count : null;
    const { rec, next, problem } = await checkRecord(data, pos, out.digest, out.seq, sha256, inBatch);
    if (problem) {
      if (await followedByChain(data, pos, out.digest, sha256)) {
        throw new CorruptBundleError(`${where}: the record at byte ${start + pos} is damaged (${problem}) but later records `
          + "continue the chain, so it was written completely: the journal is corrupt or tampered");
      }
      out.discarded = data.length - pos;
      out.problem = `${problem} at byte ${start + pos}`;
      break;
    }
    const mark = rec.extra.batch;
    if (mark && mark[0] === 1) batch = { count: out.records.length, end: out.end, digest: out.digest, seq: out.seq, pos };
    pos = next;
    rec.end = start + pos;
    out.records.push(rec);
    Object.assign(out, { end: rec.end, digest: rec.digest, seq: rec.seq });
    if (mark && mark[0] === mark[1]) batch = null;
  }
  if (batch) dropOpenBatch(out, batch, data.length);
  return out;
}

/** The whole journal checked from genesis against the manifest's commit point (journal.{bytes,seq,digest});
 * returns the scan; `lagging` = the complete records after the commit point (to replay on the head file). */
export async function readCommitted(data, manifest, { sha256 = webSha256, where = "journal" } = {}) {
  const j = manifest.journal, b = manifest.base;
  if (data === null && j.bytes) throw new CorruptBundleError(`${where} is missing (the manifest records ${j.bytes} journal bytes)`);
  const s = await scan(data || new Uint8Array(0), { startDigest: await genesis(b.id, sha256), startSeq: b.seq, sha256, where });
  const committed = s.records.filter((r) => r.end <= j.bytes);
  const last = committed[committed.length - 1];
  const ok = last
    ? last.end === j.bytes && last.seq === j.seq && last.digest === j.digest
    : j.bytes === 0 && j.seq === b.seq && j.digest === (await genesis(b.id, sha256));
  if (!ok) {
    throw new CorruptBundleError(`${where} does not match the manifest's commit point (journal.bytes=${j.bytes}, `
      + `journal.seq=${j.seq}): ${s.problem || "records differ"}; the journal is corrupt or tampered`);
  }
  return { ...s, lagging: s.records.filter((r) => r.end > j.bytes) };
}
