"""Comparisons whose tolerance follows the maths of what is compared.

A top-1 label is the argmax of scores: two implementations whose scores differ by at most ``e`` can pick
different classes only where the two best scores are within ``2 e`` of each other. So agreement is checked
in two steps: the scores to a tolerance, then the labels everywhere except on such near-ties.
"""

from __future__ import annotations

import numpy as np


def torch_scores(learner, ds, batch_size: int = 256) -> np.ndarray:
    """The torch learner's ``(N, C)`` scores of every image of ``ds``: what ``edgecl.experiment.evaluate`` takes
    the argmax of (eager torch embeddings, ``learner.scores``)."""
    import torch

    from edgecl.features import FeatureExtractor

    spec = learner.backbone.spec
    fx = FeatureExtractor(spec.input_size, spec.mean, spec.std, batch_size=batch_size, engine="torch",
                          device=learner.device)
    feats = fx.embed(learner.embedding_module(), ds, frozen=learner.embedding_frozen)
    with torch.no_grad():
        return np.concatenate([learner.scores(feats[i : i + batch_size]).float().numpy()
                               for i in range(0, len(feats), batch_size)])


def near_ties(scores: np.ndarray, gap: float) -> np.ndarray:
    """Rows whose best two scores are within ``gap``."""
    top2 = np.sort(np.asarray(scores, dtype=np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] <= gap


def assert_top1_agrees(ref: np.ndarray, scores: np.ndarray, pred: np.ndarray, rtol: float = 1e-4) -> None:
    """``scores`` equal the reference scores ``ref`` within ``rtol`` of the largest |score|, and ``pred`` (top-1
    indices of the other implementation) equals ``ref``'s argmax on every row that is no near-tie at twice the
    largest score difference (the only rows such a difference can flip)."""
    ref, scores = np.asarray(ref, np.float64), np.asarray(scores, np.float64)
    assert ref.shape == scores.shape, (ref.shape, scores.shape)
    err = float(np.abs(scores - ref).max(initial=0.0))
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-12)
    assert err <= rtol * scale, f"scores differ by {err:.3g} (> {rtol:g} x {scale:.3g})"
    differ = np.asarray(pred) != ref.argmax(axis=1)
    flipped = np.nonzero(differ & ~near_ties(ref, 2 * err))[0]
    assert flipped.size == 0, f"top-1 differs on rows {flipped.tolist()} whose best two scores are > {2 * err:.3g} apart"
