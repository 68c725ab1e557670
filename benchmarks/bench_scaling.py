"""How predict and add-class scale with the number of classes (synthetic heads), with a plot.

    python benchmarks/bench_scaling.py [--classes 10,100,1000,10000] [--ridge-classes 10,100,1000]
                                       [--ridge-m 2048] [--threads 2] [--repeats 30] [--out benchmarks/results]

For every class count C a bundle is exported with the embedded backbone
(``edgecl-resnet10t``, 32 px, D = 512) and a synthetic head of C classes:
prototypes (SimpleCIL's ``prototype_cosine``) and, when the runtime has it,
RanPAC's ``ridge`` head with an M-dim random projection. Head arrays are
random: the cost of scoring and updating does not depend on their values.

Measured per C (median over ``--repeats``):

* ``predict_b1_ms`` / ``predict_b32_ms``: ``Bundle.predict`` on uint8 images
  (preprocess + backbone + head + top-1), ``head_b1_ms`` / ``head_b32_ms``:
  the head's scores + argmax alone;
* ``add_head_ms``: the head update for 5 examples (``head.with_examples``,
  in memory, each add applied to the head the previous add returned, as the store does), ``add_persist_ms``: the journaled, fsynced update on disk
  (``edgecl_runtime.store.add_examples``), ``add_embed_ms``: the embedding pass.

Writes ``scaling.json`` (with the command and machine) and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# numpy's BLAS threads (set before numpy loads): the head's product at batch 1 is a
# matrix-vector product, where extra BLAS threads only synchronise and compete with
# onnxruntime's threads; on a busy 2-core machine they made it 100x slower.
BLAS_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--blas-threads=")), "1")
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, BLAS_THREADS)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SyntheticLearner:
    """Just enough of a learner for ``export_learner``: a real backbone, a synthetic head."""

    name = "synthetic"
    hparams: dict = {}

    def __init__(self, backbone, kind: str, arrays: dict, num_classes: int):
        self.backbone, self.kind, self.arrays, self.num_classes = backbone, kind, arrays, num_classes

    def embedding_module(self):
        return self.backbone

    def export_head(self):
        return self.kind, self.arrays


def prototype_arrays(c: int, d: int, rng) -> dict:
    return {"prototypes": rng.standard_normal((c, d)).astype(np.float32), "counts": np.full(c, 5, np.int64)}


def ridge_arrays(c: int, d: int, m: int, rng) -> dict:
    from edgecl_runtime.heads.ridge import RidgeHead

    w_rand = rng.standard_normal((d, m)).astype(np.float32)
    h = np.maximum(rng.standard_normal((min(4 * m, 4096), d)).astype(np.float32) @ w_rand, 0).astype(np.float64)
    head = RidgeHead(h.T @ h, rng.standard_normal((m, c)), 1e3, np.full(c, 5, np.int64), w_rand)
    return head.arrays()


def measure(bundle_path: Path, threads: int, repeats: int, rng) -> dict:
    from edgecl_runtime import Bundle, store
    from edgecl_runtime.benchmark import timings

    b = Bundle.load(bundle_path, device="cpu", threads=threads)
    _, h, w = b.input_size
    one = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    many = rng.integers(0, 256, (32, h, w, 3), dtype=np.uint8)
    e1, e32 = b.embed(one), b.embed(many)
    out = {
        "predict_b1_ms": timings(lambda: b.predict(one), repeats)["p50_ms"],
        "predict_b32_ms": timings(lambda: b.predict(many), max(5, repeats // 3))["p50_ms"],
        "head_b1_ms": timings(lambda: b.head.scores(e1).argmax(1), repeats)["p50_ms"],
        "head_b32_ms": timings(lambda: b.head.scores(e32).argmax(1), max(5, repeats // 3))["p50_ms"],
    }
    examples = [rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8) for _ in range(6)]
    embs = [b.embed(x) for x in examples]
    out["add_embed_ms"] = timings(lambda: b.embed(examples[0]), max(5, repeats // 3))["p50_ms"]
    # Chained, as the store applies updates: each add extends the head the previous one
    # returned. (Adding twice to the *same* head forks it, and a fork of a prototype head
    # copies its shared row buffer: O(classes), not what a device does.)
    chain = [b.head]

    def add_one():
        chain[0] = chain[0].with_examples(None, embs[0])

    out["add_head_ms"] = timings(add_one, max(5, repeats // 3))["p50_ms"]
    persist = []
    for i, e in enumerate(embs):
        t0 = time.perf_counter()
        store.add_examples(bundle_path, f"new-{i}", e)
        persist.append(time.perf_counter() - t0)
    out["add_persist_ms"] = float(np.median(persist[1:]) * 1e3)
    out["head_file_mib"] = sum(p.stat().st_size for p in bundle_path.glob("head-*")) / 2**20
    return out


def growth(rows: list[dict]) -> list[dict]:
    """Cost ratios between successive class counts of each head, beside the class ratio.

    "No worse than linear" holds for a step when every predict ratio is at most its class
    ratio; "flat" for add-class when the head update's ratio stays near 1.
    """
    keys = ("predict_b1_ms", "predict_b32_ms", "head_b1_ms", "head_b32_ms", "add_head_ms", "add_persist_ms")
    out = []
    for kind in dict.fromkeys(r["head"] for r in rows):
        rs = sorted((r for r in rows if r["head"] == kind), key=lambda r: r["classes"])
        for a, b in zip(rs, rs[1:]):
            out.append({"head": kind, "from": a["classes"], "to": b["classes"], "class_ratio": b["classes"] / a["classes"],
                        "cost_ratio": {k: b[k] / a[k] for k in keys}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="10,100,1000,10000")
    ap.add_argument("--ridge-classes", default="10,100,1000")
    ap.add_argument("--ridge-m", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--blas-threads", default="1", help="numpy BLAS threads; pass as --blas-threads=N (read before numpy loads)")
    ap.add_argument("--note", action="append", default=[], help="a note stored with the results (repeatable)")
    args = ap.parse_args()

    import torch

    from edgecl.zoo import create_backbone
    from edgecl_export import export_learner
    from edgecl_runtime.benchmark import machine
    from edgecl_runtime.heads import HEADS

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    backbone = create_backbone("edgecl-resnet10t")
    d = backbone.spec.embedding_dim
    plans = [("prototype_cosine", int(c)) for c in args.classes.split(",")]
    if "ridge" in HEADS and args.ridge_classes:
        plans += [("ridge", int(c)) for c in args.ridge_classes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, c in plans:
            arrays = prototype_arrays(c, d, rng) if kind == "prototype_cosine" else ridge_arrays(c, d, args.ridge_m, rng)
            learner = SyntheticLearner(backbone, kind, arrays, c)
            path = Path(tmp) / f"{kind}-{c}"
            export_learner(learner, [f"class-{i}" for i in range(c)], path)
            row = {"head": kind, "classes": c, "dim": d, **({"M": args.ridge_m} if kind == "ridge" else {})}
            row.update(measure(path, args.threads, args.repeats, rng))
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python", *sys.argv]), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "threads": args.threads,
              "blas_threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
              "notes": args.note, "rows": rows, "growth": growth(rows)}
    for g in result["growth"]:
        print(f"{g['head']} {g['from']} -> {g['to']} classes (x{g['class_ratio']:g}): "
              + ", ".join(f"{k} x{v:.2f}" for k, v in g["cost_ratio"].items()))
    (out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out / "scaling.png", result)
    print(f"written {out / 'scaling.json'} and {out / 'scaling.png'}")


def plot(rows: list[dict], path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in (("prototype_cosine", "o-"), ("ridge", "s--")):
        rs = [r for r in rows if r["head"] == kind]
        if not rs:
            continue
        c = [r["classes"] for r in rs]
        label = "prototypes" if kind == "prototype_cosine" else f"ridge (RanPAC M={rs[0].get('M')})"
        axes[0].plot(c, [r["predict_b1_ms"] for r in rs], style, label=f"{label}: predict batch 1")
        axes[0].plot(c, [r["predict_b32_ms"] / 32 for r in rs], style, alpha=0.5, label=f"{label}: predict batch 32, per image")
        axes[0].plot(c, [r["head_b1_ms"] for r in rs], style, alpha=0.3, label=f"{label}: head only, batch 1")
        axes[1].plot(c, [r["add_head_ms"] for r in rs], style, label=f"{label}: head update")
        axes[1].plot(c, [r["add_persist_ms"] for r in rs], style, alpha=0.5, label=f"{label}: journaled + fsync")
    cs = sorted({r["classes"] for r in rows})
    base = [r for r in rows if r["head"] == "prototype_cosine"]
    if base:  # a linear reference through the smallest size's head cost
        axes[0].plot(cs, [base[0]["head_b1_ms"] * c / cs[0] for c in cs], ":", color="grey", label="linear in classes")
    for ax, title in zip(axes, ("predict latency vs classes", "add-class (5 examples) vs classes")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(f"edgecl runtime, {m['cpu']} ({m['cpu_count']} cores, {result['threads']} threads), "
                 f"onnxruntime {m['onnxruntime']}, D=512", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
