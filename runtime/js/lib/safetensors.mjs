// Reader of the safetensors layout (bundle format 3 head files), validating the header against the buffer.
//
// Layout: u64 LE header length N | N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]},
// optional "__metadata__": {str: str}} | data (little-endian, row-major; offsets relative to the end of the header).

import { CorruptBundleError } from "./errors.mjs";

export const DTYPES = { F32: Float32Array, F64: Float64Array, I64: BigInt64Array, U64: BigUint64Array };
const MAX_HEADER = 100 * 1024 * 1024;

const isCount = (v) => Number.isSafeInteger(v) && v >= 0;

function checkEntry(name, e, dataLen, where) {
  const bad = (msg) => new CorruptBundleError(`${where}: tensor ${JSON.stringify(name)} ${msg}`);
  if (e === null || typeof e !== "object" || Array.isArray(e)) throw bad("has no {dtype, shape, data_offsets} entry");
  const extra = Object.keys(e).filter((k) => !["dtype", "shape", "data_offsets"].includes(k));
  if (extra.length) throw bad(`has unknown field(s) ${extra.join(", ")}`);
  const Ctor = DTYPES[e.dtype];
  if (!Ctor) throw bad(`has dtype ${JSON.stringify(e.dtype)}; this reader takes ${Object.keys(DTYPES).join(", ")}`);
  if (!Array.isArray(e.shape) || !e.shape.every(isCount)) throw bad(`has an invalid shape ${JSON.stringify(e.shape)}`);
  const off = e.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !off.every(isCount) || off[0] > off[1] || off[1] > dataLen) {
    throw bad(`has data_offsets ${JSON.stringify(off)} outside the ${dataLen} data bytes`);
  }
  const count = e.shape.reduce((a, b) => a * b, 1);
  if ((off[1] - off[0]) !== count * Ctor.BYTES_PER_ELEMENT) {
    throw bad(`has ${off[1] - off[0]} bytes, shape ${JSON.stringify(e.shape)} of ${e.dtype} needs ${count * Ctor.BYTES_PER_ELEMENT}`);
  }
  return { Ctor, count };
}

function readHeader(bytes, where) {
  if (bytes.length < 8) throw new CorruptBundleError(`${where}: ${bytes.length} bytes is too short for a safetensors file`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(Math.min(MAX_HEADER, bytes.length - 8))) {
    throw new CorruptBundleError(`${where}: header length ${n} exceeds the file (${bytes.length} bytes)`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + Number(n))));
  } catch (err) {
    throw new CorruptBundleError(`${where}: header is not UTF-8 JSON (${err.message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new CorruptBundleError(`${where}: header is not a JSON object`);
  }
  return { header, dataStart: 8 + Number(n) };
}

function checkMetadata(meta, where) {
  if (meta === undefined) return {};
  if (meta === null || typeof meta !== "object" || Array.isArray(meta) || !Object.values(meta).every((v) => typeof v === "string")) {
    throw new CorruptBundleError(`${where}: __metadata__ must map strings to strings`);
  }
  return meta;
}

/** Parse safetensors bytes -> {tensors: {name: {dtype, shape, data: TypedArray}}, metadata}.
 * The tensors must tile the data section exactly (no gaps, overlaps or trailing bytes), as the reference
 * implementation requires; anything else is a CorruptBundleError naming the problem. */
export function parseSafetensors(bytes, where = "safetensors") {
  const { header, dataStart } = readHeader(bytes, where);
  const dataLen = bytes.length - dataStart;
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const checked = names.map((name) => ({ name, ...checkEntry(name, header[name], dataLen, where) }));
  checked.sort((a, b) => header[a.name].data_offsets[0] - header[b.name].data_offsets[0]);
  let expect = 0;
  for (const { name } of checked) {
    const [begin, end] = header[name].data_offsets;
    if (begin !== expect) throw new CorruptBundleError(`${where}: tensor ${JSON.stringify(name)} starts at ${begin}, expected ${expect} (gap or overlap)`);
    expect = end;
  }
  if (expect !== dataLen) throw new CorruptBundleError(`${where}: ${dataLen - expect} data bytes after the last tensor`);
  const tensors = {};
  for (const { name, Ctor, count } of checked) {
    const [begin, end] = header[name].data_offsets;
    const copy = bytes.slice(dataStart + begin, dataStart + end); // aligned
    tensors[name] = { dtype: header[name].dtype, shape: header[name].shape.slice(), data: new Ctor(copy.buffer, 0, count) };
  }
  return { tensors, metadata: checkMetadata(header.__metadata__, where) };
}
