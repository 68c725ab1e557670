"""Open-set measures of a learner during the class-incremental protocol: the classes still to come are unknowns.

After task ``t`` the test images of the classes seen so far are the *known*
images and those of the classes of later tasks the *unknown* ones. ``OpenSetProbe``
(an ``after_task`` hook of ``edgecl.experiment.run_experiment``) scores both with
the learner's runtime head (what the device runs: ``edgecl_runtime.heads``),
for every candidate score of ``edgecl_runtime.unknown``: AUROC and FPR at 95 %
TPR; and, for the head kind's default score, the threshold ``calibrate`` sets
from the seen classes' training images (as ``edgecl export`` does), with the
test images it accepts and the known-class accuracy it leaves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecl_runtime import unknown
from edgecl_runtime.heads import head_class

CALIBRATION_PER_CLASS = 20  # training images per seen class the threshold is set from (as the export's default)


def runtime_head(learner, dim: int):
    """The runtime head the learner would export (its fixed transform kept inside the head)."""
    kind, arrays = learner.export_head()
    return head_class(kind).from_arrays(arrays, learner.num_classes, dim)


def probe_points(num_tasks: int, max_points: int) -> list[int]:
    """Up to ``max_points`` evenly spaced tasks after which later classes remain (the last task has no unknowns)."""
    candidates = list(range(num_tasks - 1))
    if len(candidates) <= max_points:
        return candidates
    return sorted({candidates[round(i * (len(candidates) - 1) / (max_points - 1))] for i in range(max_points)})


def subsample(labels: np.ndarray, rows: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` of ``rows`` per label (seeded), ascending."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(rows[labels[rows] == c])[:per_class] for c in np.unique(labels[rows])]
    return np.sort(np.concatenate(picked)) if picked else rows[:0]


def measures(known: np.ndarray, unknown_: np.ndarray) -> dict[str, float]:
    return {"auroc": unknown.auroc(known, unknown_), "fpr95": unknown.fpr_at_tpr(known, unknown_, 0.95)}


class OpenSetProbe:
    """``after_task`` hook recording open-set measures at ``probe_points``; ``records`` holds one dict per point."""

    def __init__(self, scenario, train, max_points: int = 4, target: float = unknown.DEFAULT_TARGET, seed: int = 0):
        self.scenario, self.train, self.target, self.seed = scenario, train, target, seed
        self.points = set(probe_points(scenario.num_tasks, max_points))
        self.records: list[dict[str, Any]] = []

    def _embed(self, learner, ds, rows: np.ndarray) -> np.ndarray:
        return learner.features.embed(learner.embedding_module(), ds, rows, frozen=learner.embedding_frozen).numpy()

    def __call__(self, t: int, learner, test, seen: np.ndarray) -> None:
        if t not in self.points:
            return
        later = np.setdiff1d(np.arange(len(test)), seen)
        fk, fu = self._embed(learner, test, seen), self._embed(learner, test, later)
        head = runtime_head(learner, fk.shape[1])
        sk, su = head.scores(fk), head.scores(fu)
        ck, cu = unknown.candidates(head, fk, sk), unknown.candidates(head, fu, su)
        record = {"task": t, "known": len(seen), "unknown": len(later), "kind": head.kind,
                  "candidates": {n: measures(ck[n], cu[n]) for n in ck}}
        record["default"] = self._calibrated(learner, head, t, (fk, sk), (fu, su), test.labels[seen])
        self.records.append(record)

    def _calibrated(self, learner, head, t, known, unknown_, known_labels) -> dict[str, Any]:
        """The default score's threshold from training images, and what it does on the test images."""
        (fk, sk), (fu, su) = known, unknown_
        rows = self.scenario.seen_indices(self.train, t)
        rows = subsample(self.train.labels, rows, CALIBRATION_PER_CLASS, self.seed + t)
        cal = unknown.calibrate(head, self._embed(learner, self.train, rows), self.train.labels[rows],
                                target=self.target, seed=self.seed)
        name, thr = cal["score"], cal["threshold"]
        ck, cu = (unknown.unknown_scores(head, name, f, s, cal.get("noise_ratio")) for f, s in ((fk, sk), (fu, su)))
        accepted = ck <= thr
        correct = np.argmax(sk, axis=1) == known_labels
        return {
            "score": name, "threshold": thr,
            "known_accepted": float(accepted.mean()), "unknown_accepted": float((cu <= thr).mean()),
            "auroc": unknown.auroc(ck, cu), "fpr95": unknown.fpr_at_tpr(ck, cu, 0.95), "noise_ratio": cal.get("noise_ratio"),
            "accuracy": float(correct.mean()), "accuracy_at_threshold": float((correct & accepted).mean()),
            "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else float("nan"),
            "pseudo_unknown_accepted": cal["calibration"]["pseudo_unknown_accepted"],
        }

    def summary(self) -> dict[str, Any]:
        """Means over the probe points: per candidate AUROC / FPR@95, and the default score's calibrated measures."""
        if not self.records:
            return {}
        names = self.records[0]["candidates"]
        mean = lambda xs: float(np.nanmean(xs))  # noqa: E731
        out = {"kind": self.records[0]["kind"], "points": [r["task"] for r in self.records],
               "candidates": {n: {m: mean([r["candidates"][n][m] for r in self.records]) for m in ("auroc", "fpr95")}
                              for n in names}}
        keys = [k for k, v in self.records[0]["default"].items() if isinstance(v, float)]
        out["default"] = {"score": self.records[0]["default"]["score"],
                          **{k: mean([r["default"][k] for r in self.records]) for k in keys}}
        out["per_point"] = self.records
        return out
