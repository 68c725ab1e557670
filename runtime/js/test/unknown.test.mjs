// Unknown scores (lib/unknown.mjs) on hand-computed cases: the count-corrected nearest cosine, the other
// reductions of unknown.py, and the threshold of predict(..., {unknown}).
import assert from "node:assert/strict";
import { test } from "node:test";

import { IncompatibleBundleError, InvalidInputError, PrototypeHead, unknownScores, unknownThreshold } from "../index.mjs";

// two classes: prototypes along x (4 examples) and y (1 example)
const head = new PrototypeHead(new Float32Array([2, 0, 0, 3]), [4, 1], 2);
const features = new Float32Array([1, 1, 5, 0]); // 45 degrees between them; on class 0
const scores = new Float32Array([Math.SQRT1_2, Math.SQRT1_2, 1, 0]);

test("nearest_cosine: 1 - max cos * sqrt(1 + r / n_c)", () => {
  const plain = unknownScores({}, head, features, scores, 2);
  assert.ok(Math.abs(plain[0] - (1 - Math.SQRT1_2)) < 1e-15 && plain[1] === 0);
  const m = { unknown: { score: "nearest_cosine", noise_ratio: 1, threshold: 0.1 } };
  const scaled = unknownScores(m, head, features, scores, 2);
  // class 1 (one example) is scaled by sqrt(2), class 0 by sqrt(1.25): the image at 45 degrees is nearest class 1
  assert.ok(Math.abs(scaled[0] - (1 - Math.SQRT1_2 * Math.SQRT2)) < 1e-12);
  assert.ok(Math.abs(scaled[1] - (1 - Math.sqrt(1.25))) < 1e-12);
});

test("the other reductions of unknown.py", () => {
  const row = (name) => unknownScores({ unknown: { score: name } }, head, features, scores, 2)[1];
  assert.equal(row("max_score"), -1);
  assert.equal(row("margin"), -1);
  assert.ok(Math.abs(row("energy") + Math.log(Math.E + 1)) < 1e-12);
  assert.ok(Math.abs(row("msp") + Math.E / (Math.E + 1)) < 1e-12);
  assert.throws(() => row("bogus"), IncompatibleBundleError);
});

test("the threshold: auto, a number, none", () => {
  assert.equal(unknownThreshold({ unknown: { threshold: 0.25 } }, "auto"), 0.25);
  assert.equal(unknownThreshold({}, 0.5), 0.5);
  assert.equal(unknownThreshold({}, null), null);
  assert.throws(() => unknownThreshold({ unknown: { threshold: null } }, "auto"), IncompatibleBundleError);
  assert.throws(() => unknownThreshold({}, "high"), InvalidInputError);
  assert.throws(() => unknownThreshold({}, Infinity), InvalidInputError);
});
