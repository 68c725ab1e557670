// Format readers: safetensors header validation, .npy, .npz (numpy.savez), ONNX metadata_props.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CorruptBundleError, parseNpy, parseNpz, parseSafetensors, readMetadataProps, writeNpy } from "../index.mjs";

function safetensors(header, data) {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

const protos = new Float32Array([1, 2, 3, 4, 5, 6]);
const counts = new BigInt64Array([3n, 7n]);
const DATA = new Uint8Array([...new Uint8Array(protos.buffer), ...new Uint8Array(counts.buffer)]);
const GOOD = {
  prototypes: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
  counts: { dtype: "I64", shape: [2], data_offsets: [24, 40] },
  __metadata__: { format: "edgecl" },
};

test("safetensors: reads tensors and metadata", () => {
  const { tensors, metadata } = parseSafetensors(safetensors(GOOD, DATA));
  assert.deepEqual(Array.from(tensors.prototypes.data), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(tensors.prototypes.shape, [2, 3]);
  assert.deepEqual(Array.from(tensors.counts.data), [3n, 7n]);
  assert.deepEqual(metadata, { format: "edgecl" });
});

test("safetensors: refuses headers that do not fit the buffer", () => {
  const bad = (header, data, msg) => assert.throws(() => parseSafetensors(safetensors(header, data), "h.safetensors"),
    (e) => e instanceof CorruptBundleError && msg.test(e.message) && e.message.startsWith("h.safetensors"));
  bad({ ...GOOD, counts: { ...GOOD.counts, dtype: "I32" } }, DATA, /dtype "I32"/);
  bad({ ...GOOD, counts: { ...GOOD.counts, data_offsets: [24, 48] } }, DATA, /outside the 40 data bytes/);
  bad({ ...GOOD, counts: { ...GOOD.counts, shape: [3] } }, DATA, /needs 24/);
  bad({ ...GOOD, counts: { ...GOOD.counts, shape: [-2] } }, DATA, /invalid shape/);
  bad({ ...GOOD, counts: { ...GOOD.counts, data_offsets: [16, 32] } }, DATA, /gap or overlap/);
  bad(GOOD, new Uint8Array([...DATA, 0]), /1 data bytes after the last tensor/);
  bad({ ...GOOD, __metadata__: { n: 1 } }, DATA, /strings to strings/);
  bad({ ...GOOD, counts: { ...GOOD.counts, extra: 1 } }, DATA, /unknown field/);
  bad([1, 2], DATA, /not a JSON object/);
  const long = safetensors(GOOD, DATA);
  new DataView(long.buffer).setBigUint64(0, 1n << 40n, true);
  assert.throws(() => parseSafetensors(long), /exceeds the file/);
  assert.throws(() => parseSafetensors(new Uint8Array(5)), /too short/);
  const notJson = safetensors(GOOD, DATA);
  notJson[8] = 0xff;
  assert.throws(() => parseSafetensors(notJson), /not UTF-8 JSON/);
});

test("npy: write then read; refuses unknown dtypes", () => {
  const a = new Float32Array([0.5, -1, 3.25, 7, 8, 9]);
  const back = parseNpy(writeNpy(a, [2, 3]));
  assert.equal(back.dtype, "float32");
  assert.deepEqual(back.shape, [2, 3]);
  assert.deepEqual(Array.from(back.data), Array.from(a));
  const bytes = writeNpy(new Uint8Array([1, 2]), [2]);
  assert.deepEqual(Array.from(parseNpy(bytes).data), [1, 2]);
  const text = new TextDecoder("latin1").decode(bytes).replace("|u1", ">u2");
  assert.throws(() => parseNpy(Uint8Array.from(text, (c) => c.charCodeAt(0))), /unsupported dtype >u2/);
  assert.throws(() => parseNpy(new Uint8Array(20)), /bad magic/);
});

test("npz: reads a format-2 head file written by numpy.savez", () => {
  const z = parseNpz(new Uint8Array(readFileSync(new URL("../../../tests/fixtures/bundle-v2/head-000000.npz", import.meta.url))));
  assert.deepEqual(Object.keys(z).sort(), ["counts", "prototypes"]);
  assert.deepEqual(z.prototypes.shape, [3, 8]);
  assert.equal(z.counts.dtype, "int64");
  assert.throws(() => parseNpz(new Uint8Array(100), "x.npz"), /x.npz: .*central directory/);
});

function pb(fields) { // fields: [number, wire, payload Uint8Array | number]
  const out = [];
  const varint = (v) => { while (v >= 128) { out.push((v % 128) | 128); v = Math.floor(v / 128); } out.push(v); };
  for (const [num, wire, val] of fields) {
    varint(num * 8 + wire);
    if (wire === 0) varint(val);
    else { varint(val.length); out.push(...val); }
  }
  return Uint8Array.from(out);
}
const str = (s) => new TextEncoder().encode(s);

test("ONNX metadata_props are read from the model's top level only", () => {
  const entry = (k, v) => pb([[1, 2, str(k)], [2, 2, str(v)]]);
  const graph = pb([[14, 2, entry("inside", "graph")]]); // a field 14 inside the graph is not metadata
  const model = pb([[1, 0, 9], [7, 2, graph], [14, 2, entry("edgecl.format_version", "3")], [8, 2, pb([[2, 0, 17]])],
    [14, 2, entry("edgecl.classes", '["a","é"]')]]);
  assert.deepEqual(readMetadataProps(model), { "edgecl.format_version": "3", "edgecl.classes": '["a","é"]' });
  assert.throws(() => readMetadataProps(model.subarray(0, model.length - 3)), CorruptBundleError);
});

test("manifest seal: canonical JSON as Python's json.dumps(sort_keys, compact, ensure_ascii) writes it", async () => {
  const { canonicalManifest, pyFloat } = await import("../lib/canonical.mjs");
  // what Python prints for these floats: repr()
  const want = ["1e+16", "1000000000000000.0", "0.0001", "1e-05", "1.5e-07", "123.456", "-2.5e+20", "8.940696716308594e-08", "100.0", "-0.0"];
  assert.deepEqual(["1e16", "1e15", "0.0001", "0.00001", "1.5e-7", "123.456", "-2.5e20", "8.940696716308594e-08", "100.0", "-0.0"].map(pyFloat), want);
  const text = '{"z": 1.0, "checksum": "x", "b": ["Caf\u00e9 \ud83d\udc69", 1, true, null, {"\u00e9": 2, "e": 1e-5}], "a\\n": -3}';
  assert.equal(canonicalManifest(text), '{"a\\n":-3,"b":["Caf\\u00e9 \\ud83d\\udc69",1,true,null,{"e":1e-05,"\\u00e9":2}],"z":1.0}');
  assert.throws(() => canonicalManifest('{"a": 1,'), CorruptBundleError);
});

test("format 3 model metadata must agree with the manifest", async () => {
  const { checkModelMetadata } = await import("../lib/bundle.mjs");
  const manifest = { format_version: 3, head: { kind: "prototype_cosine" }, preprocess: { input_size: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } };
  const meta = { "edgecl.format_version": "3", "edgecl.head_kind": "prototype_cosine", "edgecl.preprocess": JSON.stringify({ ...manifest.preprocess, layout: "NCHW" }) };
  checkModelMetadata(manifest, meta);
  assert.throws(() => checkModelMetadata(manifest, { ...meta, "edgecl.format_version": undefined }), /edgecl.format_version/);
  assert.throws(() => checkModelMetadata(manifest, { ...meta, "edgecl.head_kind": "ridge" }), /head_kind/);
  assert.throws(() => checkModelMetadata(manifest, { ...meta, "edgecl.preprocess": '{"input_size": [3, 64, 64]}' }), /input_size/);
});
