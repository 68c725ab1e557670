// Reader and writer of NumPy .npy arrays (format versions 1-3, little-endian, C order).

import { CorruptBundleError } from "./errors.mjs";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const DTYPES = {
  "|u1": ["uint8", Uint8Array], "<u1": ["uint8", Uint8Array], "|i1": ["int8", Int8Array],
  "<f4": ["float32", Float32Array], "<f8": ["float64", Float64Array],
  "<i4": ["int32", Int32Array], "<u4": ["uint32", Uint32Array],
  "<i8": ["int64", BigInt64Array], "<u8": ["uint64", BigUint64Array],
};

function parseHeader(text, where) {
  const descr = /'descr':\s*'([^']*)'/.exec(text);
  const fortran = /'fortran_order':\s*(True|False)/.exec(text);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(text);
  if (!descr || !fortran || !shape) throw new CorruptBundleError(`${where}: unreadable .npy header ${JSON.stringify(text)}`);
  const dims = shape[1].split(",").map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (!dims.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CorruptBundleError(`${where}: bad .npy shape (${shape[1]})`);
  }
  return { descr: descr[1], fortran: fortran[1] === "True", shape: dims };
}

/** Parse .npy bytes -> {dtype, shape, data: TypedArray}. Refuses big-endian, Fortran order and unknown dtypes. */
export function parseNpy(bytes, where = ".npy") {
  if (bytes.length < 10 || !MAGIC.every((b, i) => bytes[i] === b)) {
    throw new CorruptBundleError(`${where}: not a .npy file (bad magic)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (![1, 2, 3].includes(major) || start + headerLen > bytes.length) {
    throw new CorruptBundleError(`${where}: unsupported .npy version ${major} or truncated header`);
  }
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + headerLen));
  const { descr, fortran, shape } = parseHeader(text, where);
  const known = DTYPES[descr];
  if (!known) throw new CorruptBundleError(`${where}: unsupported dtype ${descr} (little-endian u1/i1/f4/f8/i4/u4/i8/u8 only)`);
  if (fortran && shape.length > 1) throw new CorruptBundleError(`${where}: Fortran-order arrays are not supported`);
  const [dtype, Ctor] = known;
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  const nbytes = count * Ctor.BYTES_PER_ELEMENT;
  if (offset + nbytes > bytes.length) {
    throw new CorruptBundleError(`${where}: holds ${bytes.length - offset} data bytes, shape ${JSON.stringify(shape)} needs ${nbytes}`);
  }
  const copy = bytes.slice(offset, offset + nbytes); // aligned copy
  return { dtype, shape, data: new Ctor(copy.buffer, 0, count) };
}

/** .npy bytes (version 1) of a float32/uint8/float64 typed array with the given shape. */
export function writeNpy(data, shape) {
  const descr = data instanceof Float32Array ? "<f4" : data instanceof Float64Array ? "<f8" : data instanceof Uint8Array ? "|u1" : null;
  if (!descr) throw new TypeError("writeNpy: Float32Array, Float64Array or Uint8Array expected");
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += " ".repeat(pad % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}
