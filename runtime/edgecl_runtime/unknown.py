""""Unknown" scores: how far an image is from every class a head knows (higher = more likely unknown).

A head gives two ``(N, C)`` matrices per image batch: its class ``scores`` and,
where it keeps a reference direction per class, the ``cosines`` of the image
to them (``Head.cosines``: prototypes, projected class means, Gaussian means).
Every candidate score is a reduction over the classes of one of them:

* ``max_score``: minus the top class score (max-logit; for a Gaussian head the
  smallest Mahalanobis distance, for a prototype head one minus the top cosine);
* ``msp``: minus the top softmax probability of the scores (Hendrycks & Gimpel 2017);
* ``energy``: minus ``logsumexp`` of the scores (Liu et al. 2020, T = 1);
* ``margin``: minus the gap between the two top scores;
* ``nearest_cosine``: one minus the top cosine to a class mean (the cosine distance to the nearest class;
  nearest-prototype / KNN-style, Sun et al. 2022).

Each head kind names its default (``Head.UNKNOWN_SCORE``), chosen by measurement
(docs/unknown.md).

A class mean of few examples is itself noisy, so an image's cosine to it is
lower than to the mean of many: ``x = mu + e`` with ``E|e|^2 = s^2`` gives
``cos(x, m_n) ~ cos(x, mu) / sqrt(1 + r / n)``, ``r = s^2 / |mu|^2``. With the
data's ``r`` (``noise_ratio``, estimated at calibration and kept with the
threshold) each cosine is scaled by ``sqrt(1 + r / n_c)``, so that a class added
on the device from 5 images accepts its images at the rate the trained classes do. ``calibrate`` sets a threshold from training embeddings: the
``target`` quantile of the known images' scores, with class-wise folds of
pseudo-unknowns (classes left out of the reduction) to report the threshold's
rejection rate of classes the head does not know.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

CANDIDATES = ("max_score", "msp", "energy", "margin", "nearest_cosine")
DEFAULT_TARGET = 0.95  # acceptance of known images the default threshold aims at


def _top2(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if m.shape[1] == 1:
        return m[:, 0], np.full(m.shape[0], -np.inf)
    part = np.partition(m, m.shape[1] - 2, axis=1)
    return part[:, -1], part[:, -2]


def _logsumexp(s: np.ndarray) -> np.ndarray:
    top = s.max(axis=1)
    return top + np.log(np.exp(s - top[:, None]).sum(axis=1))


def reduce(name: str, scores: np.ndarray, cosines: np.ndarray | None) -> np.ndarray:
    """Candidate ``name`` of ``(N, C)`` float64 ``scores`` / ``cosines`` (columns of absent classes at -inf)."""
    if name == "max_score":
        return -scores.max(axis=1)
    if name == "msp":
        return -np.exp(scores.max(axis=1) - _logsumexp(scores))
    if name == "energy":
        return -_logsumexp(scores)
    if name == "margin":
        top, second = _top2(scores)
        return -(top - second) if scores.shape[1] > 1 else -np.abs(top)
    if name == "nearest_cosine":
        if cosines is None:
            raise InvalidInputError("this head keeps no class directions: no nearest_cosine score")
        return 1.0 - cosines.max(axis=1)
    raise InvalidInputError(f"unknown score {name!r}; choose one of {', '.join(CANDIDATES)}")


def class_cosines(head, embeddings: np.ndarray, labels: np.ndarray | None = None,
                  ratio: float | None = None) -> np.ndarray | None:
    """``head.cosines`` (leave-one-out for ``labels``), each column scaled by ``sqrt(1 + ratio / n_c)`` (``n_c``: the
    examples behind class ``c``'s mean, one fewer for an image's own class when it is left out)."""
    cos = head.cosines(embeddings, labels)
    if cos is None or not ratio:
        return cos
    n = np.broadcast_to(np.asarray(head.counts, np.float64), cos.shape).copy()
    if labels is not None:
        rows = np.nonzero((labels >= 0) & (head.counts[np.maximum(labels, 0)] > 1))[0]
        n[rows, labels[rows]] -= 1
    return cos * np.sqrt(1.0 + ratio / n)


def noise_ratio(head, embeddings: np.ndarray, labels: np.ndarray) -> float | None:
    """``r = s^2 / |mu|^2`` of the data in the head's mean space: the median over classes (with at least 3 images)
    of the within-class spread over the squared norm of the mean (bias-corrected); ``None`` without class means."""
    space = head.mean_space(embeddings)
    if space is None:
        return None
    x, ratios = space[0], []
    for c in np.unique(labels):
        xc = x[labels == c]
        if len(xc) < 3:
            continue
        mu = xc.mean(axis=0)
        s2 = float(((xc - mu) ** 2).sum(axis=1).mean()) * len(xc) / (len(xc) - 1)
        m2 = float(mu @ mu) - s2 / len(xc)
        if m2 > 0:
            ratios.append(s2 / m2)
    return float(np.median(ratios)) if ratios else None


def candidates(head, embeddings: np.ndarray, scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every candidate score the head supports for ``(N, D)`` embeddings (its ``scores`` if already computed)."""
    s = np.asarray(head.scores(embeddings) if scores is None else scores, np.float64)
    cos = head.cosines(embeddings)
    names = [n for n in CANDIDATES if cos is not None or n != "nearest_cosine"]
    return {n: reduce(n, s, cos) for n in names}


def unknown_scores(head, name: str, embeddings: np.ndarray, scores: np.ndarray, ratio: float | None = None) -> np.ndarray:
    """``(N,)`` float64 score ``name`` of a head's images (higher: more likely unknown); ``ratio``: the bundle's
    ``noise_ratio`` (count-corrected cosines)."""
    cos = class_cosines(head, embeddings, None, ratio) if name == "nearest_cosine" else None
    return reduce(name, np.asarray(scores, np.float64), cos)


# ----------------------------------------------------------------- measures
def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown image scores higher than a known one (ties count half)."""
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    r_unknown = ranks[len(known):].sum()
    return float((r_unknown - len(unknown) * (len(unknown) - 1) / 2) / (len(known) * len(unknown)))


def threshold_for(known: np.ndarray, target: float) -> float:
    """The smallest of ``known`` at or below which a fraction ``target`` of them lies."""
    if not 0 < target < 1:
        raise InvalidInputError(f"target acceptance must be in (0, 1), got {target}")
    known = np.sort(np.asarray(known, np.float64))
    return float(known[max(int(np.ceil(target * len(known) - 1e-9)) - 1, 0)])  # the smallest that accepts target


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = DEFAULT_TARGET) -> float:
    """Fraction of ``unknown`` accepted (score at or below the threshold) when ``tpr`` of ``known`` are accepted."""
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    return float(np.mean(np.asarray(unknown) <= threshold_for(known, tpr)))


# -------------------------------------------------------------- calibration
def class_folds(n_classes: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint groups of class indices (a seeded shuffle), each held out once as pseudo-unknowns."""
    order = np.random.default_rng(seed).permutation(n_classes)
    return [f for f in np.array_split(order, min(folds, n_classes)) if len(f)]


def held_out_scores(name: str, scores: np.ndarray, cosines: np.ndarray | None, labels: np.ndarray,
                    held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``name`` of the known and of the pseudo-unknown images when the classes ``held_out`` are left out
    of the reduction: the head as if it had never been taught them."""
    keep = np.ones(scores.shape[1], bool)
    keep[held_out] = False
    s = scores[:, keep]
    c = None if cosines is None else cosines[:, keep]
    out = reduce(name, s, c)
    is_unknown = np.isin(labels, held_out)
    return out[~is_unknown], out[is_unknown]


def calibrate(head, embeddings: np.ndarray, labels: np.ndarray, name: str | None = None,
              target: float = DEFAULT_TARGET, folds: int = 5, seed: int = 0, description: str = "") -> dict:
    """The bundle's ``unknown`` record: score ``name`` (default: the head kind's), the threshold accepting
    ``target`` of the training images ``embeddings`` (labels index the head's classes), and, from ``folds``
    class-wise folds of pseudo-unknowns, the fraction of never-taught classes' images the threshold accepts."""
    name = name or head.UNKNOWN_SCORE
    labels = np.asarray(labels, np.int64)
    held = head.held_out_scores(embeddings, labels)  # leave-one-out where the head can, else in-sample
    scores = np.asarray(head.scores(embeddings) if held is None else held, np.float64)
    ratio = noise_ratio(head, embeddings, labels) if name == "nearest_cosine" else None
    cos = class_cosines(head, embeddings, labels, ratio) if name == "nearest_cosine" else None  # leave-one-out
    known = reduce(name, scores, cos)
    threshold = threshold_for(known, target)
    accepted, aurocs = [], []
    if head.num_classes >= 2:
        for held in class_folds(head.num_classes, folds, seed):
            k, u = held_out_scores(name, scores, cos, labels, held)
            accepted.append(float(np.mean(u <= threshold)))
            aurocs.append(auroc(k, u))
    return {
        "score": name,
        "threshold": threshold,
        "noise_ratio": ratio,
        "target_acceptance": target,
        "method": "quantile of the training images' scores; class-wise folds of pseudo-unknowns for the estimates",
        "calibration": {
            "images": int(len(labels)), "classes": int(head.num_classes), "folds": len(accepted), "seed": seed,
            "description": description,
            "pseudo_unknown_accepted": float(np.mean(accepted)) if accepted else None,
            "pseudo_unknown_auroc": float(np.nanmean(aurocs)) if aurocs else None,
        },
    }


def open_set_report(pred_known, truth: np.ndarray, pred_unknown, threshold: float | None) -> dict:
    """Measures of a bundle's unknown score on ``pred_known`` (predictions of images of classes it knows, true
    class indices ``truth``) and ``pred_unknown`` (of classes it does not know): AUROC, FPR at 95 % TPR, and at
    ``threshold`` the fraction of each accepted, top-1 counting a rejection as an error, top-1 of the accepted."""
    k, u = pred_known.unknown_scores, pred_unknown.unknown_scores
    correct = pred_known.indices == truth
    out = {"known_images": int(len(k)), "unknown_images": int(len(u)), "auroc": auroc(k, u),
           "fpr_at_95_tpr": fpr_at_tpr(k, u, 0.95), "top1": float(correct.mean()) if len(k) else float("nan"),
           "threshold": threshold}
    if threshold is not None:
        accepted = k <= threshold
        out.update({"known_accepted": float(accepted.mean()) if len(k) else float("nan"),
                    "unknown_accepted": float(np.mean(u <= threshold)) if len(u) else float("nan"),
                    "top1_at_threshold": float(np.mean(correct & accepted)) if len(k) else float("nan"),
                    "top1_of_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan")})
    return out
