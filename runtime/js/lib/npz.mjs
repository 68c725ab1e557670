// Reader of numpy.savez archives (bundle format 2 head files): a zip of stored (uncompressed) .npy entries.

import { CorruptBundleError } from "./errors.mjs";
import { parseNpy } from "./npy.mjs";

const EOCD = 0x06054b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

function findEndRecord(view) {
  for (let p = view.byteLength - 22; p >= Math.max(0, view.byteLength - 22 - 65535); p--) {
    if (view.getUint32(p, true) === EOCD) return p;
  }
  throw new CorruptBundleError("not a zip archive (no end of central directory)");
}

/** Sizes and offset of a central directory entry, reading the zip64 extra field where they overflow. */
function entrySizes(view, p, nameLen, extraLen) {
  let size = view.getUint32(p + 24, true);
  let offset = view.getUint32(p + 42, true);
  let q = p + 46 + nameLen;
  const end = q + extraLen;
  while (q + 4 <= end) {
    const id = view.getUint16(q, true), len = view.getUint16(q + 2, true);
    if (id === 0x0001) {
      let r = q + 4;
      if (size === 0xffffffff) { size = Number(view.getBigUint64(r, true)); r += 8; }
      if (view.getUint32(p + 20, true) === 0xffffffff) r += 8; // compressed size
      if (offset === 0xffffffff) offset = Number(view.getBigUint64(r, true));
    }
    q += 4 + len;
  }
  return { size, offset };
}

/** Parse .npz bytes -> {name (without .npy): {dtype, shape, data}}. Only stored entries (numpy.savez). */
export function parseNpz(bytes, where = ".npz") {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = {};
  try {
    const eocd = findEndRecord(view);
    const n = view.getUint16(eocd + 10, true);
    let p = view.getUint32(eocd + 16, true);
    for (let i = 0; i < n; i++) {
      if (view.getUint32(p, true) !== CENTRAL) throw new CorruptBundleError("bad central directory entry");
      const method = view.getUint16(p + 10, true);
      const nameLen = view.getUint16(p + 28, true), extraLen = view.getUint16(p + 30, true);
      const commentLen = view.getUint16(p + 32, true);
      const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
      if (method !== 0) throw new CorruptBundleError(`entry ${name} is compressed (numpy.savez_compressed); only stored entries are read`);
      const { size, offset } = entrySizes(view, p, nameLen, extraLen);
      if (view.getUint32(offset, true) !== LOCAL) throw new CorruptBundleError(`bad local header of ${name}`);
      const data = offset + 30 + view.getUint16(offset + 26, true) + view.getUint16(offset + 28, true);
      if (data + size > bytes.length) throw new CorruptBundleError(`entry ${name} runs past the end of the file`);
      out[name.replace(/\.npy$/, "")] = parseNpy(bytes.subarray(data, data + size), `${where}:${name}`);
      p += 46 + nameLen + extraLen + commentLen;
    }
  } catch (err) {
    if (err instanceof CorruptBundleError) throw new CorruptBundleError(`${where}: ${err.message.replace(`${where}: `, "")}`);
    throw new CorruptBundleError(`${where}: unreadable zip archive (${err.message})`);
  }
  return out;
}
