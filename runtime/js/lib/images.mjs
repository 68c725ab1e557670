// Image files -> RGB pixels in Node, as edgecl_runtime.io.decode_image reads them in Python: PNG (pngjs) and
// JPEG (jpeg-js), turned as their EXIF Orientation says, transparency composited on white, 16-bit samples
// by their high byte. PNG pixels equal Python's exactly; JPEG pixels differ by a few levels (jpeg-js has
// its own IDCT and chroma upsampling; Pillow and browsers use libjpeg-turbo's). The decoders are imported
// on first use, so this module loads anywhere (it is vendored with the rest of lib/ into the serve page,
// which decodes with the browser instead).

import { InvalidInputError } from "./errors.mjs";

export const MAX_IMAGE_PIXELS = 2 ** 25; // as edgecl_runtime.limits.MAX_IMAGE_PIXELS (env EDGECL_MAX_IMAGE_PIXELS)
export const BACKGROUND = [255, 255, 255]; // what transparent pixels are composited on (edgecl_runtime.io.BACKGROUND)
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const ORIENTATION_TAG = 0x0112;

const isPng = (b) => PNG_SIGNATURE.every((v, i) => b[i] === v);
const isJpeg = (b) => b[0] === 0xff && b[1] === 0xd8;
const ascii = (b, at, n) => String.fromCharCode(...b.subarray(at, at + n));

/** The Orientation tag (1..8) of a TIFF-structured EXIF block, 1 if absent or unreadable. */
export function tiffOrientation(tiff) {
  if (tiff.length < 8) return 1;
  const le = ascii(tiff, 0, 2) === "II";
  if (!le && ascii(tiff, 0, 2) !== "MM") return 1;
  const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  const u16 = (at) => view.getUint16(at, le), u32 = (at) => view.getUint32(at, le);
  const ifd = u32(4);
  if (ifd + 2 > tiff.length) return 1;
  for (let i = 0, n = u16(ifd); i < n && ifd + 14 + 12 * i <= tiff.length; i++) {
    const entry = ifd + 2 + 12 * i;
    if (u16(entry) === ORIENTATION_TAG) {
      const value = u16(entry + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

/** The EXIF block of a JPEG (its APP1 "Exif" segment), or null. */
function jpegExif(b) {
  for (let at = 2; at + 4 <= b.length && b[at] === 0xff;) {
    const marker = b[at + 1], size = (b[at + 2] << 8) | b[at + 3];
    if (marker === 0xda || marker === 0xd9) return null; // start of scan: no more metadata
    if (marker === 0xe1 && ascii(b, at + 4, 6) === "Exif\0\0") return b.subarray(at + 10, at + 2 + size);
    at += 2 + size;
  }
  return null;
}

/** The EXIF block of a PNG (its eXIf chunk), or null. */
function pngExif(b) {
  for (let at = 8; at + 8 <= b.length;) {
    const size = ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];
    const kind = ascii(b, at + 4, 4);
    if (kind === "eXIf") return b.subarray(at + 8, at + 8 + size);
    if (kind === "IDAT" || kind === "IEND") return null; // eXIf comes before the image data
    at += 12 + size;
  }
  return null;
}

/** The EXIF Orientation (1..8) of PNG or JPEG bytes; 1 without one. */
export function exifOrientation(bytes) {
  const exif = isJpeg(bytes) ? jpegExif(bytes) : isPng(bytes) ? pngExif(bytes) : null;
  return exif ? tiffOrientation(exif) : 1;
}

/** Where the pixel at (x, y) of the shown image lies in the stored w x h image, for each orientation. */
const SOURCE = {
  1: (x, y, w, h) => [x, y],
  2: (x, y, w, h) => [w - 1 - x, y],
  3: (x, y, w, h) => [w - 1 - x, h - 1 - y],
  4: (x, y, w, h) => [x, h - 1 - y],
  5: (x, y, w, h) => [y, x],
  6: (x, y, w, h) => [y, h - 1 - x],
  7: (x, y, w, h) => [w - 1 - y, h - 1 - x],
  8: (x, y, w, h) => [w - 1 - y, x],
};

/** An image {data, width, height, channels} turned as EXIF orientation `o` says (a viewer's view of it). */
export function orient(img, o) {
  if (o === 1) return img;
  const { data, width: w, height: h, channels: c } = img;
  const [W, H] = o >= 5 ? [h, w] : [w, h];
  const out = new data.constructor(data.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const [sx, sy] = SOURCE[o](x, y, w, h);
      out.set(data.subarray((sy * w + sx) * c, (sy * w + sx + 1) * c), (y * W + x) * c);
    }
  }
  return { data: out, width: W, height: H, channels: c };
}

/** RGBA samples (8-bit values) -> RGB Uint8Array on `background`: round((c*a + bg*(255-a)) / 255). */
export function composite(rgba, background = BACKGROUND) {
  const n = rgba.length / 4, out = new Uint8Array(n * 3);
  for (let p = 0; p < n; p++) {
    const a = rgba[4 * p + 3];
    for (let ch = 0; ch < 3; ch++) out[3 * p + ch] = Math.floor((rgba[4 * p + ch] * a + background[ch] * (255 - a) + 127) / 255);
  }
  return out;
}

/** PNG samples of `depth` bits as 8-bit values: 16-bit by the high byte (as Pillow), 1/2/4-bit scaled to 0..255. */
function to8bit(data, depth, paletted) {
  if (depth === 8 || paletted) return data;
  const max = 2 ** depth - 1;
  return Uint8Array.from(data, (v) => (depth === 16 ? v >> 8 : (v * 255) / max));
}

function checkSize(width, height, where) {
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new InvalidInputError(`${where} has ${width * height} pixels (${width} x ${height}); the limit is ${MAX_IMAGE_PIXELS} per image`);
  }
}

/** A PNG's pixels as RGBA 8-bit values (the size checked from its header before decoding). */
async function decodePng(bytes, where) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length >= 24) checkSize(view.getUint32(16), view.getUint32(20), where);
  const { PNG } = (await import("pngjs")).default;
  const png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { skipRescale: true });
  return { rgba: to8bit(png.data, png.depth, png.colorType === 3), width: png.width, height: png.height };
}

/** A JPEG's pixels as RGBA 8-bit values (jpeg-js refuses more than MAX_IMAGE_PIXELS before decoding). */
async function decodeJpeg(bytes) {
  const decode = (await import("jpeg-js")).default.decode;
  const mp = MAX_IMAGE_PIXELS / 1e6;
  const img = decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: mp, maxMemoryUsageInMB: 4 * mp + 64 });
  return { rgba: img.data, width: img.width, height: img.height };
}

/** Bytes of a PNG or JPEG file -> {data: Uint8Array RGB, width, height, channels: 3}, as Python reads them. */
export async function decodeImage(bytes, where = "image") {
  const decoder = isPng(bytes) ? decodePng : isJpeg(bytes) ? decodeJpeg : null;
  if (!decoder) throw new InvalidInputError(`cannot read image ${where}: Node reads PNG and JPEG files (convert others, or pass a .npy array)`);
  let decoded;
  try {
    decoded = await decoder(bytes, where);
  } catch (err) {
    throw err instanceof InvalidInputError ? err : new InvalidInputError(`cannot read image ${where}: ${err.message}`);
  }
  const { rgba, width, height } = decoded;
  return orient({ data: composite(rgba), width, height, channels: 3 }, exifOrientation(bytes));
}
