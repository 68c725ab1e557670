// numpy's float arithmetic where the result must match the Python runtime bit for bit.

const f32 = Math.fround;

/** numpy's pairwise sum of a contiguous run (add.reduce along the last axis): blocks of <= 128 values
 * summed with 8 interleaved accumulators, longer runs split in halves. `round` = f32 for float32 arrays. */
export function pairwiseSum(a, start, n, round = (x) => x) {
  if (n < 8) {
    let r = 0;
    for (let i = 0; i < n; i++) r = round(r + a[start + i]);
    return r;
  }
  if (n <= 128) {
    const r = [];
    for (let j = 0; j < 8; j++) r.push(round(a[start + j]));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = round(r[j] + a[start + i + j]);
    let res = round(round(round(r[0] + r[1]) + round(r[2] + r[3])) + round(round(r[4] + r[5]) + round(r[6] + r[7])));
    for (; i < n; i++) res = round(res + a[start + i]);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return round(pairwiseSum(a, start, n2, round) + pairwiseSum(a, start + n2, n - n2, round));
}

/** Rows of a float32 (rows x dim) matrix divided by max(L2 norm, eps), as numpy's
 * `x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)` computes them in float32. */
export function l2NormalizeRows(x, rows, dim, eps = 1e-12) {
  const out = new Float32Array(rows * dim);
  const sq = new Float32Array(dim);
  const epsF = f32(eps);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < dim; j++) sq[j] = f32(x[r * dim + j] * x[r * dim + j]);
    const norm = Math.max(f32(Math.sqrt(pairwiseSum(sq, 0, dim, f32))), epsF);
    for (let j = 0; j < dim; j++) out[r * dim + j] = f32(x[r * dim + j] / norm);
  }
  return out;
}

/** Rows of a (rows x dim) matrix as float64, divided by max(L2 norm, eps) (heads/base.py l2_normalize on float64). */
export function l2NormalizeRows64(x, rows, dim, eps = 1e-12) {
  const out = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let sq = 0;
    for (let j = 0; j < dim; j++) sq += x[r * dim + j] * x[r * dim + j];
    const norm = Math.max(Math.sqrt(sq), eps);
    for (let j = 0; j < dim; j++) out[r * dim + j] = x[r * dim + j] / norm;
  }
  return out;
}
