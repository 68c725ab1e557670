// "Unknown" scores of a prototype_cosine head, as edgecl_runtime/unknown.py computes them (higher: more likely an
// image of a class the bundle was never taught), and the threshold predict(..., {unknown}) rejects above.
//
// nearest_cosine = 1 - max_c cos(x, m_c) * sqrt(1 + r / n_c): m_c the raw prototype (class mean), n_c its example
// count, r the manifest's unknown.noise_ratio (null or 0: no scaling). The cosines are float64 (the features and
// prototypes are float32), like Head.cosines in Python.

import { IncompatibleBundleError, InvalidInputError } from "./errors.mjs";
import { l2NormalizeRows64 } from "./numeric.mjs";

export const SCORES = ["max_score", "msp", "energy", "margin", "nearest_cosine"];
export const DEFAULT_SCORE = "nearest_cosine"; // PrototypeCosineHead.UNKNOWN_SCORE

/** (n x C) float64 cosines of features (n*dim) to a head's prototypes, each scaled by sqrt(1 + ratio / n_c). */
export function classCosines(head, features, n, ratio = null) {
  const C = head.numClasses, D = head.dim;
  const x = l2NormalizeRows64(features, n, D), p = head.normalized64();
  const scale = head.counts.map((nc) => (ratio ? Math.sqrt(1 + ratio / nc) : 1));
  const out = new Float64Array(n * C);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let j = 0; j < D; j++) s += x[i * D + j] * p[c * D + j];
      out[i * C + c] = s * scale[c];
    }
  }
  return out;
}

/** log(sum(exp(row))) of one row, shifted by its maximum (unknown.py _logsumexp). */
function logsumexp(row) {
  const top = Math.max(...row);
  let s = 0;
  for (const v of row) s += Math.exp(v - top);
  return top + Math.log(s);
}

/** The two largest values of a row (the second -Infinity for one class). */
function top2(row) {
  let a = -Infinity, b = -Infinity;
  for (const v of row) {
    if (v > a) [a, b] = [v, a];
    else if (v > b) b = v;
  }
  return [a, b];
}

/** Score `name` of one image from its row of class scores (float64) or of scaled cosines (unknown.py reduce). */
function reduceRow(name, row, cos) {
  if (name === "nearest_cosine") return 1 - Math.max(...cos);
  if (name === "max_score") return -Math.max(...row);
  if (name === "msp") return -Math.exp(Math.max(...row) - logsumexp(row));
  if (name === "energy") return -logsumexp(row);
  if (name === "margin") {
    const [a, b] = top2(row);
    return row.length > 1 ? -(a - b) : -Math.abs(a);
  }
  throw new InvalidInputError(`unknown score ${JSON.stringify(name)}; choose one of ${SCORES.join(", ")}`);
}

/** The unknown score a bundle reports: its calibrated one (manifest.unknown.score), else the head's default. */
export function scoreName(manifest) {
  return manifest.unknown?.score || DEFAULT_SCORE;
}

/** (n) Float64Array of unknown scores of n images from their features (n*dim) and class scores (n*C). */
export function unknownScores(manifest, head, features, scores, n) {
  const name = scoreName(manifest), C = head.numClasses;
  if (!SCORES.includes(name)) throw new IncompatibleBundleError(`unknown score ${JSON.stringify(name)} is not one this client computes`);
  const cos = name === "nearest_cosine" ? classCosines(head, features, n, manifest.unknown?.noise_ratio ?? null) : null;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const row = Array.from(scores.subarray(i * C, (i + 1) * C));
    out[i] = reduceRow(name, row, cos && Array.from(cos.subarray(i * C, (i + 1) * C)));
  }
  return out;
}

/** The threshold predict(..., {unknown}) applies: "auto" the bundle's calibrated one, a number itself,
 * null/undefined none (Python's Bundle.unknown_threshold). */
export function unknownThreshold(manifest, unknown) {
  if (unknown === null || unknown === undefined) return null;
  if (typeof unknown === "string") {
    if (unknown !== "auto") throw new InvalidInputError(`unknown must be 'auto', a number or null, got ${JSON.stringify(unknown)}`);
    const t = manifest.unknown?.threshold;
    if (t === null || t === undefined) {
      throw new IncompatibleBundleError("this bundle has no calibrated unknown threshold (exported before edgecl 0.2 or without training data): re-export it, or pass a threshold number");
    }
    return Number(t);
  }
  if (typeof unknown !== "number" || !Number.isFinite(unknown)) throw new InvalidInputError(`unknown threshold must be a finite number, got ${String(unknown)}`);
  return unknown;
}
