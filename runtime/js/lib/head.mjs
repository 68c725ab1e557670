// The prototype_cosine head: class prototypes = running means of example features, scored by cosine.
//
// Updates follow edgecl_runtime/heads/base.py (shifted_mean) and heads/prototype.py exactly:
//   total = float64 sum of the k rows (row by row), new class: float32(total / k),
//   extending a class of n examples: float32((float64(proto) * n + total) / (n + k)).
// Heads are immutable: every update returns a new head.

import { InvalidInputError, CorruptBundleError } from "./errors.mjs";
import { l2NormalizeRows, l2NormalizeRows64 } from "./numeric.mjs";

export class PrototypeHead {
  /** prototypes: Float32Array (C*dim) raw means; counts: array of C positive integers. */
  constructor(prototypes, counts, dim) {
    this.prototypes = prototypes;
    this.counts = counts;
    this.dim = dim;
    this._normed = null;
    this._normed64 = null;
  }

  static kind = "prototype_cosine";

  /** From head-file arrays {prototypes: {shape, data}, counts: {shape, data}} (checked like from_arrays). */
  static fromArrays(arrays, numClasses, dim) {
    const p = arrays.prototypes, c = arrays.counts;
    if (!p || !c) throw new CorruptBundleError("prototype_cosine head file lacks array(s) prototypes and/or counts");
    if (p.shape.length !== 2 || p.shape[0] !== numClasses || p.shape[1] !== dim || c.shape.length !== 1 || c.shape[0] !== numClasses) {
      throw new CorruptBundleError(`head arrays ${JSON.stringify(p.shape)}/${JSON.stringify(c.shape)} do not match ${numClasses} classes of dimension ${dim}`);
    }
    const protos = p.data instanceof Float32Array ? p.data : Float32Array.from(p.data);
    const counts = Array.from(c.data, Number);
    if (!protos.every(Number.isFinite) || !counts.every((n) => Number.isSafeInteger(n) && n >= 1)) {
      throw new CorruptBundleError("head arrays hold non-finite prototypes or non-positive counts");
    }
    return new PrototypeHead(protos, counts, dim);
  }

  get numClasses() { return this.counts.length; }

  prototype(index) { return this.prototypes.subarray(index * this.dim, (index + 1) * this.dim); }

  /** (C*dim) float32 L2-normalised prototypes: what model.onnx takes as `prototypes` (cached). */
  normalized() {
    if (!this._normed) this._normed = l2NormalizeRows(this.prototypes, this.numClasses, this.dim);
    return this._normed;
  }

  /** (C*dim) float64 L2-normalised prototypes: the class means the unknown score compares with (cached). */
  normalized64() {
    if (!this._normed64) this._normed64 = l2NormalizeRows64(this.prototypes, this.numClasses, this.dim);
    return this._normed64;
  }

  /** (n x C) cosine scores of raw features (Float32Array n*dim), for bundles whose model has no scoring. */
  scores(features, n) {
    const x = l2NormalizeRows(features, n, this.dim), p = this.normalized(), C = this.numClasses, D = this.dim;
    const out = new Float32Array(n * C);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let j = 0; j < D; j++) s += x[i * D + j] * p[c * D + j];
        out[i * C + c] = s;
      }
    }
    return out;
  }

  /** New head with k rows (Float32Array k*dim) added to class `index` (null: a new last class). */
  withExamples(index, rows, k) {
    const D = this.dim;
    if (!Number.isInteger(k) || k < 1 || rows.length !== k * D) throw new InvalidInputError(`examples must be k >= 1 rows of dimension ${D}`);
    if (!rows.every(Number.isFinite)) throw new InvalidInputError("examples produced non-finite embeddings");
    const total = new Float64Array(D);
    for (let i = 0; i < k; i++) for (let j = 0; j < D; j++) total[j] += rows[i * D + j];
    if (index === null) {
      const protos = new Float32Array(this.prototypes.length + D);
      protos.set(this.prototypes);
      for (let j = 0; j < D; j++) protos[this.prototypes.length + j] = total[j] / k;
      return new PrototypeHead(protos, [...this.counts, k], D);
    }
    const n = this.counts[index], left = n + k;
    const protos = this.prototypes.slice();
    for (let j = 0; j < D; j++) protos[index * D + j] = (protos[index * D + j] * n + total[j]) / left;
    const counts = this.counts.slice();
    counts[index] = left;
    return new PrototypeHead(protos, counts, D);
  }

  /** New head without class `index` (later classes shift down). */
  withoutClass(index) {
    const D = this.dim;
    const protos = new Float32Array(this.prototypes.length - D);
    protos.set(this.prototypes.subarray(0, index * D));
    protos.set(this.prototypes.subarray((index + 1) * D), index * D);
    return new PrototypeHead(protos, this.counts.filter((_, i) => i !== index), D);
  }
}
