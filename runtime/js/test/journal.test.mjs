// Journal records, chain and replay; the running-mean head; class names; resize weights.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { CorruptBundleError, InvalidInputError, PrototypeHead, className, genesis, resizeWeights, scan } from "../index.mjs";
import { nodeSha256 } from "../lib/node.mjs";

const BASE = "a73d825fdab84f81b991aa49b826efd8";

function record(prev, header, rows) {
  const body = rows ? new Uint8Array(Float32Array.from(rows).buffer) : new Uint8Array(0);
  const ascii = JSON.stringify(header).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  const payload = Buffer.concat([Buffer.from(ascii + "\n", "ascii"), body]);
  const digest = createHash("sha256").update(Buffer.concat([Buffer.from(prev, "hex"), payload])).digest();
  const prefix = Buffer.alloc(8);
  prefix.write("ECJ1", 0, "ascii");
  prefix.writeUInt32LE(payload.length, 4);
  return [Buffer.concat([prefix, digest, payload]), digest.toString("hex")];
}

async function journal(n, batches = {}) {
  let prev = await genesis(BASE, nodeSha256);
  const parts = [];
  for (let i = 1; i <= n; i++) {
    const extra = batches[i] ? { batch: batches[i] } : {};
    const [bytes, d] = record(prev, { seq: i, op: "add", class: `c${i}`, id: `${i}`.padStart(16, "0"), time: "t", shape: [1, 2], ...extra }, [i, -i]);
    parts.push(bytes);
    prev = d;
  }
  return new Uint8Array(Buffer.concat(parts));
}

test("genesis digest is sha256(b'edgecl-journal\\0' + base id), also through WebCrypto", async () => {
  const want = createHash("sha256").update(Buffer.concat([Buffer.from("edgecl-journal\0"), Buffer.from(BASE)])).digest("hex");
  assert.equal(await genesis(BASE, nodeSha256), want);
  assert.equal(await genesis(BASE), want);
  assert.equal(want, "d910e2e63a21dedded3812f7b7bc392914a565753d0774adcf3972da8739a734"); // tests/fixtures/bundle-v2
});

test("scan follows the chain and stops at a torn tail", async () => {
  const data = await journal(3);
  const opts = { startDigest: await genesis(BASE), startSeq: 0, sha256: nodeSha256 };
  const s = await scan(data, opts);
  assert.deepEqual(s.records.map((r) => [r.seq, r.name, Array.from(r.rows.data)]), [[1, "c1", [1, -1]], [2, "c2", [2, -2]], [3, "c3", [3, -3]]]);
  assert.equal(s.end, data.length);
  const torn = await scan(data.subarray(0, data.length - 5), opts);
  assert.equal(torn.records.length, 2);
  assert.match(torn.problem, /incomplete record at byte/);
  assert.equal(torn.discarded, data.length - 5 - torn.end);
});

test("a damaged record that later records chain from is corruption; a damaged last one is discarded", async () => {
  const data = await journal(3);
  const opts = { startDigest: await genesis(BASE), startSeq: 0, sha256: nodeSha256 };
  const mid = data.slice();
  mid[45] ^= 1;
  await assert.rejects(scan(mid, opts), (e) => e instanceof CorruptBundleError && /later records continue the chain/.test(e.message));
  const last = data.slice();
  last[last.length - 1] ^= 1;
  const s = await scan(last, opts);
  assert.equal(s.records.length, 2);
  assert.match(s.problem, /digest mismatch/);
  // a journal cannot be grafted onto another base
  await assert.rejects(scan(data, { ...opts, startDigest: await genesis("another-base-id") }), CorruptBundleError);
});

test("running means as shifted_mean: float64 sums, one float32 rounding", () => {
  const head = new PrototypeHead(new Float32Array([1, 0.1]), [3], 2);
  const added = head.withExamples(null, new Float32Array([0.1, 0.2, 0.3, 0.7]), 2);
  assert.deepEqual(Array.from(added.prototype(1)), [Math.fround((0.1 + 0.3) / 2), Math.fround((Math.fround(0.2) + Math.fround(0.7)) / 2)].map(Math.fround));
  const ext = added.withExamples(0, new Float32Array([0.5, 0.5]), 1);
  assert.equal(ext.prototype(0)[1], Math.fround((Math.fround(0.1) * 3 + 0.5) / 4));
  assert.deepEqual(ext.counts, [4, 2]);
  assert.deepEqual(head.counts, [3]); // immutable
  assert.deepEqual(ext.withoutClass(0).counts, [2]);
  assert.throws(() => head.withExamples(0, new Float32Array([NaN, 1]), 1), InvalidInputError);
});

test("class names are validated and NFC-normalised like inputs.class_name", () => {
  assert.equal(className("Cafe\u0301"), "Caf\u00e9");
  assert.equal(className("👩\u200d🔬"), "👩\u200d🔬");
  for (const bad of ["", " x", "a/b", "..", "a\u200bb", "a\nb", "x".repeat(201), "\ud800"]) assert.throws(() => className(bad), InvalidInputError, bad);
});

test("resize weights rows sum to one", () => {
  for (const [i, o] of [[37, 32], [20, 32], [200, 9], [5, 5]]) {
    const w = resizeWeights(i, o);
    for (let r = 0; r < o; r++) assert.ok(Math.abs(w.subarray(r * i, (r + 1) * i).reduce((a, b) => a + b, 0) - 1) < 1e-6);
  }
});

test("a multi-record append is applied whole or, cut short, not at all", async () => {
  const opts = { startDigest: await genesis(BASE), startSeq: 0, sha256: nodeSha256 };
  const data = await journal(4, { 2: [1, 3], 3: [2, 3], 4: [3, 3] });
  assert.equal((await scan(data, opts)).records.length, 4);
  const cut = await scan(data.subarray(0, data.length - 3), opts);
  assert.deepEqual(cut.records.map((r) => r.seq), [1]);
  assert.equal(cut.end + cut.discarded, data.length - 3);
  assert.match(cut.problem, /^incomplete batch of updates at byte \d+ \(2 records\), then incomplete record/);
  const open = await scan(await journal(2, { 1: [1, 2] }), opts); // record 2 is outside the open batch
  assert.equal(open.records.length, 0);
  assert.match(open.problem, /incomplete batch .* a record outside the open batch/);
});

test("a record whose class name is not NFC is unreadable", async () => {
  const prev = await genesis(BASE);
  const [bytes] = record(prev, { seq: 1, op: "remove_class", class: "Cafe\u0301", id: "0".repeat(16), time: "t" });
  const s = await scan(new Uint8Array(bytes), { startDigest: prev, startSeq: 0, sha256: nodeSha256 });
  assert.equal(s.records.length, 0);
  assert.match(s.problem, /not in normal form/);
});
