"""PROOF's head: scoring time of the runtime's ``ProofFusionHead`` beside the fusion module computed by definition.

    python benchmarks/bench_proof_head.py [--classes 100,200,500] [--images 32] [--dim 192] [--repeats 5]

For each class count C a head with random weights (width ``--dim``, B50%-Inc10's number of tasks, 3 context
prompts each) scores the same ``--images`` random features three ways, timed on one thread:

* ``definition``: every image's sequence [image; C texts; C prototypes; prompts] through the one-head attention
  and layer norm (O(C² D) per image: how the head scored before);
* ``head, first call``: ``ProofFusionHead.scores`` on a new head (it projects the class tokens and computes
  their attention among themselves once, then O(C D) per image);
* ``head, cached``: the same head again (the class tokens are kept: a head is immutable).

Writes ``benchmarks/results/bench-proof-head.{json,md}`` with the command, the machine and the largest difference
between the head and the definition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_common import header, preamble, timed, write


def random_head(classes: int, dim: int, seed: int = 0):
    from edgecl_runtime.heads.proof import ProofFusionHead

    rng = np.random.default_rng(seed)
    tasks = 1 + (classes - classes // 2) // 10
    shapes = {"img_w1": (tasks, dim, dim), "img_b1": (tasks, dim), "img_w2": (tasks, dim, dim), "img_b2": (tasks, dim),
              "txt_w1": (tasks, dim, dim), "txt_b1": (tasks, dim), "txt_w2": (tasks, dim, dim), "txt_b2": (tasks, dim),
              "attn_q": (dim, dim), "attn_k": (dim, dim), "attn_v": (dim, dim), "attn_o_w": (dim, dim),
              "attn_o_b": (dim,), "ln_g": (dim,), "ln_b": (dim,), "context": (3 * tasks, dim)}
    params = {k: rng.normal(0, dim**-0.5, s).astype(np.float32) for k, s in shapes.items()}
    params["ln_g"] += 1
    return ProofFusionHead(rng.normal(size=(classes, dim)), np.full(classes, 5), rng.normal(size=(classes, dim)),
                           np.zeros(classes, np.int64), params)


def by_definition(head, feats: np.ndarray) -> np.ndarray:
    """The three-term score with the fusion module run on each image's whole sequence."""
    from edgecl_runtime.heads.base import l2_normalize
    from edgecl_runtime.heads.proof import layer_norm, project, softmax

    p = {k: v.astype(np.float64) for k, v in head.params.items()}
    img, txt = [[p[f"{s}_{k}"] for k in ("w1", "b1", "w2", "b2")] for s in ("img", "txt")]
    fi = l2_normalize(project(l2_normalize(feats.astype(np.float64)), *img))
    ti = l2_normalize(project(head.effective_texts().astype(np.float64), *txt))
    pi = l2_normalize(project(np.asarray(head.prototypes, np.float64), *img))
    c, out = len(ti), np.zeros((len(fi), len(ti)))
    for n in range(len(fi)):
        seq = np.concatenate([fi[n : n + 1], ti, pi, p["context"]])
        att = softmax((seq @ p["attn_q"]) @ (seq @ p["attn_k"]).T / np.sqrt(seq.shape[1]))
        y = layer_norm((att @ (seq @ p["attn_v"])) @ p["attn_o_w"] + p["attn_o_b"] + seq, p["ln_g"], p["ln_b"])
        out[n] = fi[n] @ ti.T + y[1 : 1 + c] @ y[0] + y[1 + c : 1 + 2 * c] @ y[0]
    return out


def case(classes: int, images: int, dim: int, repeats: int) -> dict:
    feats = np.random.default_rng(1).normal(size=(images, dim)).astype(np.float32)
    t_def, want = timed(lambda: by_definition(random_head(classes, dim), feats), 1)
    fresh = iter([random_head(classes, dim) for _ in range(repeats)])
    t_first, _ = timed(lambda: next(fresh).scores(feats), repeats)
    head = random_head(classes, dim)
    t_cached, got = timed(lambda: head.scores(feats), repeats)
    return {"classes": classes, "images": images, "definition_s": round(t_def, 4), "first_call_s": round(t_first, 4),
            "cached_s": round(t_cached, 4), "speedup_first": round(t_def / t_first, 1),
            "speedup_cached": round(t_def / t_cached, 1), "max_abs_diff": float(np.abs(got - want).max())}


def markdown(report: dict) -> str:
    lines = ["# bench-proof-head: PROOF's head beside the fusion module by definition", "",
             *preamble(report),
             f"{report['images']} random features, width {report['dim']}, 1 thread; best of {report['repeats']} "
             "(the definition once). Times in seconds per call.", "",
             "| classes | definition | head, first call | head, cached | speed-up (first / cached) | max abs diff |",
             "|---|---|---|---|---|---|"]
    for r in report["cases"]:
        lines.append(f"| {r['classes']} | {r['definition_s']} | {r['first_call_s']} | {r['cached_s']} | "
                     f"x{r['speedup_first']} / x{r['speedup_cached']} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default="100,200,500", help="comma-separated class counts")
    p.add_argument("--images", type=int, default=32, help="images scored per call")
    p.add_argument("--dim", type=int, default=192, help="feature width (the tiny CLIP's is 192)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of the head (the best is kept)")
    p.add_argument("--out", type=Path, help="output path without suffix (default: benchmarks/results/bench-proof-head)")
    args = p.parse_args(argv)
    from edgecl_runtime import blas

    report = header()
    with blas.limit(1):
        cases = [case(int(c), args.images, args.dim, args.repeats) for c in args.classes.split(",")]
    report.update({"images": args.images, "dim": args.dim, "repeats": args.repeats, "cases": cases})
    write("bench-proof-head", report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
