// Image preprocessing, ported from runtime/edgecl_runtime/preprocess.py:
// uint8 HWC RGB (or float32 in [0, 1]) -> antialiased bilinear resize to (H, W) -> /255 -> (x - mean) / std
// -> NCHW float32. Without a resize the result equals Python's bit for bit; with one it agrees to float32
// rounding (~1e-6): the per-tap float32 sums are Python's own, the short-row products (numpy's BLAS matmul
// for rows of <= 64 inputs) are summed in float64 and rounded once.

import { InvalidInputError } from "./errors.mjs";
import { pairwiseSum } from "./numeric.mjs";

const f32 = Math.fround;
const DENSE_MAX_IN = 64;

/** (nOut x nIn) float32 weights of a bilinear filter widened by the scale when shrinking (_resize_weights). */
export function resizeWeights(nIn, nOut) {
  const scale = nIn / nOut, support = Math.max(scale, 1.0);
  const w = new Float64Array(nOut * nIn);
  for (let o = 0; o < nOut; o++) {
    const center = (o + 0.5) * scale - 0.5;
    for (let i = 0; i < nIn; i++) w[o * nIn + i] = Math.max(0.0, 1.0 - Math.abs(i - center) / support);
    const sum = pairwiseSum(w, o * nIn, nIn);
    const div = sum === 0 ? 1.0 : sum;
    for (let i = 0; i < nIn; i++) w[o * nIn + i] /= div;
  }
  return Float32Array.from(w);
}

/** The non-zero run of each weight row as taps: {k, idx (k x nOut), w (k x nOut)} (_resize_taps). */
function resizeTaps(nIn, nOut) {
  const w = resizeWeights(nIn, nOut);
  const first = new Int32Array(nOut);
  let k = 1;
  for (let o = 0; o < nOut; o++) {
    let nz = 0, f = -1;
    for (let i = 0; i < nIn; i++) if (w[o * nIn + i] !== 0) { nz++; if (f < 0) f = i; }
    first[o] = Math.max(f, 0);
    k = Math.max(k, nz);
  }
  const idx = new Int32Array(k * nOut), tw = new Float32Array(k * nOut);
  for (let t = 0; t < k; t++) {
    for (let o = 0; o < nOut; o++) {
      const src = first[o] + t;
      idx[t * nOut + o] = Math.min(src, nIn - 1);
      tw[t * nOut + o] = src > nIn - 1 ? 0 : w[o * nIn + idx[t * nOut + o]];
    }
  }
  return { k, idx, w: tw };
}

/** Resize axis `axis` (0 = rows, 1 = columns) of planes (P x h x w) to nOut; returns Float32Array. */
function resizeAxis(x, planes, h, w, nOut, axis) {
  const nIn = axis === 0 ? h : w, oh = axis === 0 ? nOut : h, ow = axis === 0 ? w : nOut;
  const out = new Float32Array(planes * oh * ow);
  if (axis === 1 && nIn <= DENSE_MAX_IN) { // Python: one BLAS product per row
    const W = resizeWeights(nIn, nOut);
    for (let r = 0; r < planes * h; r++) {
      for (let o = 0; o < nOut; o++) {
        let s = 0;
        for (let i = 0; i < nIn; i++) s += f32(x[r * w + i]) * W[o * nIn + i];
        out[r * nOut + o] = s;
      }
    }
    return out;
  }
  const { k, idx, w: tw } = resizeTaps(nIn, nOut);
  for (let p = 0; p < planes; p++) {
    for (let y = 0; y < oh; y++) {
      for (let xo = 0; xo < ow; xo++) {
        const o = axis === 0 ? y : xo;
        let acc = 0;
        for (let t = 0; t < k; t++) {
          const src = idx[t * nOut + o];
          const v = axis === 0 ? x[(p * h + src) * w + xo] : x[(p * h + y) * w + src];
          const term = f32(v * tw[t * nOut + o]);
          acc = t === 0 ? term : f32(acc + term);
        }
        out[(p * oh + y) * ow + xo] = acc;
      }
    }
  }
  return out;
}

/** Resize channel planes (P x h x w) to (H x W) in Python's axis order (the axis that shrinks most first). */
export function resizePlanes(x, planes, h, w, H, W) {
  if (h === H && w === W) return x;
  const order = H / h <= W / w ? [0, 1] : [1, 0];
  let out = x, ch = h, cw = w;
  for (const axis of order) {
    const nOut = axis === 0 ? H : W;
    if ((axis === 0 ? ch : cw) !== nOut) {
      out = resizeAxis(out, planes, ch, cw, nOut, axis);
      if (axis === 0) ch = nOut; else cw = nOut;
    }
  }
  return out instanceof Float32Array ? out : Float32Array.from(out);
}

/** One image {data, height, width, channels} (channels 1, 3 or 4; data Uint8Array 0..255 or Float32Array
 * 0..1, HWC) as 3 CHW planes in its own type (uint8 stays 0..255 until the normalisation). */
function toPlanes(img, i) {
  const { data, height: h, width: w, channels: c } = img;
  if (![1, 3, 4].includes(c)) throw new InvalidInputError(`image ${i}: expected 1, 3 or 4 channels, got ${c}`);
  if (!(h >= 1 && w >= 1) || data.length !== h * w * c) throw new InvalidInputError(`image ${i}: ${data.length} values do not make a ${h}x${w}x${c} image`);
  const isU8 = data instanceof Uint8Array || data instanceof Uint8ClampedArray;
  if (!isU8 && !(data instanceof Float32Array)) throw new InvalidInputError(`image ${i}: use Uint8Array (0..255) or Float32Array (0..1)`);
  if (!isU8 && !data.every((v) => v >= 0 && v <= 1)) throw new InvalidInputError(`image ${i}: float images must hold values in [0, 1]; pass uint8 for 0..255 pixels`);
  const planes = isU8 ? new Uint8Array(3 * h * w) : new Float32Array(3 * h * w);
  for (let ch = 0; ch < 3; ch++) {
    const src = c === 1 ? 0 : ch;
    for (let p = 0; p < h * w; p++) planes[ch * h * w + p] = data[p * c + src];
  }
  return { planes, isU8 };
}

/** Images (array of {data, height, width, channels}) -> normalised NCHW Float32Array for input_size [3, H, W]. */
export function preprocess(images, inputSize, mean, std) {
  if (!Array.isArray(images) || images.length === 0) throw new InvalidInputError("empty batch: no images given");
  const [, H, W] = inputSize.map(Number);
  const m = mean.map(f32), s = std.map(f32), k255 = f32(255.0);
  const out = new Float32Array(images.length * 3 * H * W);
  images.forEach((img, i) => {
    const { planes, isU8 } = toPlanes(img, i);
    const resized = resizePlanes(planes, 3, img.height, img.width, H, W);
    const o = i * 3 * H * W;
    for (let ch = 0; ch < 3; ch++) {
      for (let p = 0; p < H * W; p++) {
        const v = resized[ch * H * W + p];
        const scaled = isU8 ? f32(v / k255) : f32(v);
        out[o + ch * H * W + p] = f32(f32(scaled - m[ch]) / s[ch]);
      }
    }
  });
  return out;
}

/** A (N, H, W, C) batch array (e.g. from a .npy file) as the image list preprocess() takes. */
export function batchImages({ data, shape }) {
  let dims = shape;
  if (dims.length === 3 && [1, 3, 4].includes(dims[2])) dims = [1, ...dims];
  if (dims.length !== 4 || ![1, 3, 4].includes(dims[3])) {
    throw new InvalidInputError(`expected images of shape (N, H, W, C) with C in 1, 3, 4; got (${shape.join(", ")})`);
  }
  const [n, h, w, c] = dims;
  if (n === 0) throw new InvalidInputError("empty batch: no images given");
  return Array.from({ length: n }, (_, i) => ({ data: data.subarray(i * h * w * c, (i + 1) * h * w * c), height: h, width: w, channels: c }));
}
