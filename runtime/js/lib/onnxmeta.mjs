// The metadata_props of an ONNX model, read from its protobuf bytes.
//
// onnxruntime-node and onnxruntime-web expose input/output names but not the model's custom metadata, so
// this walks the top level of ModelProto (field 14 = repeated StringStringEntryProto {1: key, 2: value})
// and skips every other field by its wire type.

import { CorruptBundleError } from "./errors.mjs";

function varint(bytes, pos) {
  let value = 0, scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) break;
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
  throw new CorruptBundleError("ONNX model: truncated or invalid varint");
}

/** [fieldNumber, wireType, value-or-[start,end], nextPos] of the field at pos. */
function field(bytes, pos) {
  const [key, p] = varint(bytes, pos);
  const num = Math.floor(key / 8), wire = key % 8;
  if (wire === 0) { const [v, q] = varint(bytes, p); return [num, wire, v, q]; }
  if (wire === 1) return [num, wire, null, p + 8];
  if (wire === 5) return [num, wire, null, p + 4];
  if (wire === 2) {
    const [len, q] = varint(bytes, p);
    if (q + len > bytes.length) throw new CorruptBundleError(`ONNX model: field ${num} runs past the end of the file`);
    return [num, wire, [q, q + len], q + len];
  }
  throw new CorruptBundleError(`ONNX model: unsupported protobuf wire type ${wire}`);
}

function entry(bytes, [start, end]) {
  const out = { key: "", value: "" };
  const dec = new TextDecoder("utf-8", { fatal: true });
  for (let pos = start; pos < end;) {
    const [num, wire, val, next] = field(bytes.subarray(0, end), pos);
    if (wire === 2 && (num === 1 || num === 2)) out[num === 1 ? "key" : "value"] = dec.decode(bytes.subarray(val[0], val[1]));
    pos = next;
  }
  return out;
}

/** {key: value} of ModelProto.metadata_props in ONNX model bytes (a later duplicate key wins). */
export function readMetadataProps(bytes) {
  const props = {};
  for (let pos = 0; pos < bytes.length;) {
    const [num, wire, val, next] = field(bytes, pos);
    if (num === 14 && wire === 2) {
      const { key, value } = entry(bytes, val);
      props[key] = value;
    }
    pos = next;
  }
  return props;
}
