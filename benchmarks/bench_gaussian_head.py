"""FeCAM's head: scoring with few-shot classes in Woodbury form beside dense inverses.

    python benchmarks/bench_gaussian_head.py [--classes 50,100,200] [--shots 30] [--dim 1280] [--images 256]

For each class count C a ``GaussianHead`` of C classes, ``--shots`` random non-negative (CNN-like)
examples each, width ``--dim`` (MobileNetV2's 1280), scores the same ``--images`` queries on one thread:

* ``dense``: every class's shrunk covariance inverted (``O(D^3)`` each, first call) and the distance as
  ``(x - m)^T P (x - m)`` (``O(D^2)`` per query and class: how the head scored every class before);
* ``head, first call``: ``GaussianHead.scores`` on a new head (a class of ``n <= D / 4`` examples gets its
  precision as ``diag(a) - B K B^T`` from a pivoted Cholesky factor of rank ``< n``, then ``O(D n)`` per query);
* ``head, cached``: the same head again.

Writes ``benchmarks/results/bench-gaussian-head.{json,md}`` with the command, the machine, the cached
precisions' size both ways and the largest relative difference of the scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_common import header, preamble, timed, write


def random_head(classes: int, shots: int, dim: int, seed: int = 0):
    from edgecl_runtime.heads.gaussian import GaussianHead

    rng = np.random.default_rng(seed)
    head = GaussianHead.empty(dim)
    for _ in range(classes):
        centre = np.abs(rng.normal(size=dim))
        head = head.with_examples(None, np.abs(centre + rng.normal(scale=0.5, size=(shots, dim))).astype(np.float32))
    return head


def dense_precisions(head) -> np.ndarray:
    from edgecl_runtime.heads.gaussian import _precision

    return np.stack([_precision(head.covariance(c)) for c in range(head.num_classes)])


def dense_scores(head, P: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """The ``(x - m)^T P (x - m)`` distance with dense precisions (the head's former path)."""
    from edgecl_runtime.heads.base import l2_normalize
    from edgecl_runtime.heads.gaussian import tukey

    x = l2_normalize(tukey(feats, head.beta)).astype(np.float32)
    mu = l2_normalize(head.means).astype(np.float32)
    diff = x[None] - mu[:, None]
    return -np.einsum("cnd,cnd->nc", diff @ P, diff)


def case(classes: int, shots: int, dim: int, images: int, repeats: int) -> dict:
    feats = np.abs(np.random.default_rng(1).normal(size=(images, dim))).astype(np.float32)
    head = random_head(classes, shots, dim)
    t_inv, P = timed(lambda: dense_precisions(head), 1)
    t_dense, want = timed(lambda: dense_scores(head, P, feats), repeats)
    fresh = iter([random_head(classes, shots, dim) for _ in range(repeats)])
    t_first, _ = timed(lambda: next(fresh).scores(feats), repeats)
    t_cached, got = timed(lambda: head.scores(feats), repeats)
    _, stack, _, Pd = head._scorers()
    return {"classes": classes, "dense_first_s": round(t_inv + t_dense, 3), "dense_cached_s": round(t_dense, 4),
            "first_call_s": round(t_first, 3), "cached_s": round(t_cached, 4),
            "speedup_first": round((t_inv + t_dense) / t_first, 1), "speedup_cached": round(t_dense / t_cached, 1),
            "dense_mib": round(P.nbytes / 2**20, 1),
            "woodbury_mib": round((sum(a.nbytes for a in stack) + Pd.nbytes) / 2**20, 1),
            "max_rel_diff": float(np.abs(got - want).max() / np.abs(want).max())}


def markdown(report: dict) -> str:
    lines = ["# bench-gaussian-head: FeCAM's head, few-shot classes in Woodbury form beside dense inverses", "",
             *preamble(report),
             f"{report['shots']} random non-negative examples per class, width {report['dim']}, {report['images']} queries, "
             f"1 thread; best of {report['repeats']} (the dense inversion once). Times in seconds per call (first: "
             "precisions computed, cached: kept from an earlier call), precisions in MiB.", "",
             "| classes | dense, first | dense, cached | Woodbury, first | Woodbury, cached | speed-up (first / cached) | "
             "precisions dense / Woodbury | max rel diff |", "|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        lines.append(f"| {r['classes']} | {r['dense_first_s']} | {r['dense_cached_s']} | {r['first_call_s']} | {r['cached_s']} | "
                     f"x{r['speedup_first']} / x{r['speedup_cached']} | {r['dense_mib']} / {r['woodbury_mib']} | "
                     f"{r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default="50,100,200", help="comma-separated class counts")
    p.add_argument("--shots", type=int, default=30, help="examples per class (emoji's 30 training images)")
    p.add_argument("--dim", type=int, default=1280, help="feature width (MobileNetV2's 1280)")
    p.add_argument("--images", type=int, default=256, help="queries scored per call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls of the head (the best is kept)")
    p.add_argument("--out", type=Path, help="output path without suffix (default: benchmarks/results/bench-gaussian-head)")
    args = p.parse_args(argv)
    from edgecl_runtime import blas

    report = header()
    with blas.limit(1):
        cases = [case(int(c), args.shots, args.dim, args.images, args.repeats) for c in args.classes.split(",")]
    report.update({"shots": args.shots, "dim": args.dim, "images": args.images, "repeats": args.repeats, "cases": cases})
    write("bench-gaussian-head", report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
