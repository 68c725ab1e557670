"""Runtime cost of the two-pass prompt design vs a single pass, side by side on one ViT.

    python benchmarks/bench_two_pass.py [--backbone NAME] [--weights W] [--img-size S]
                                        [--batch-sizes 1,32] [--repeats 30] [--threads 2]

Exports SimpleCIL (one pass of the frozen ViT) and L2P, DualPrompt and
CODA-Prompt (query pass + prompt selection + prompted pass, one graph each) on
the same backbone, then times ``model.onnx`` of every bundle (images and head -> scores) with
onnxruntime on CPU, round-robin (model A, B, C, D, A, B, ...) so that all see
the same machine load. Prompt learners are fitted for one epoch on 10 shapes
classes: the cost of the graph does not depend on how well it is trained,
nor on the weights, so the default ``edgecl-vit-tiny`` is used with random
weights of its architecture when its pre-trained weights are not made yet.
Writes JSON (command, machine, per model and batch size: median / p90 ms per
batch, images/s, ratio to SimpleCIL) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LEARNERS = ("simplecil", "l2p", "dualprompt", "coda_prompt")


def default_backbone() -> tuple[str, str | None, int | None]:
    """The embedded ViT when its weights are at hand (never pre-train it here), else a random ViT-tiny."""
    from edgecl.zoo.embedded import EMBEDDED, weights_path

    if "edgecl-vit-tiny" in EMBEDDED and weights_path("edgecl-vit-tiny").is_file():
        return "edgecl-vit-tiny", None, None
    return "vit_tiny_patch16_224", "random", 32


def timing_backbone(name: str, weights, img_size):
    """``create_backbone``, except that an embedded backbone whose weights are not made yet gets its
    architecture with random weights: timing does not depend on the weights, and pre-training takes long."""
    from edgecl.backbones import Backbone, BackboneSpec
    from edgecl.zoo import create_backbone
    from edgecl.backbones.base import build_timm, embedding_dim_of
    from edgecl.zoo.embedded import EMBEDDED, weights_path

    if name in EMBEDDED and weights is None and not weights_path(name).is_file():
        r = EMBEDDED[name]
        model = build_timm(r.timm_name, dict(r.model_kwargs), None).eval()
        dim = embedding_dim_of(model, tuple(r.input_size))
        spec = BackboneSpec(name, r.timm_name, dict(r.model_kwargs), tuple(r.input_size), tuple(r.mean),
                            tuple(r.std), dim, "random:0 (architecture of the embedded backbone; weights not made)")
        return Backbone(model, spec)
    return create_backbone(name, weights, img_size)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def export_all(tmp: Path, backbone) -> dict[str, Path]:
    """One bundle per learner on ``backbone``; prompt learners fitted for one epoch on 10 shapes classes."""
    from edgecl.data import BatchLoader, make_shapes
    from edgecl.learners import create_learner
    from edgecl_export import export_learner

    spec = backbone.spec
    train, _ = make_shapes(10, 5, 1, seed=0)
    paths = {}
    for name in LEARNERS:
        learner = create_learner(name, backbone, **({} if name == "simplecil" else {"epochs": 1}))
        learner.fit_task(BatchLoader(train, spec.input_size, spec.mean, spec.std, 16))
        paths[name] = export_learner(learner, train.class_names, tmp / name).path
    return paths


def time_sessions(paths: dict[str, Path], batch_sizes, repeats: int, threads: int, input_size) -> list[dict]:
    from edgecl_runtime import Bundle

    bundles = {n: Bundle.load(p, device="cpu", threads=threads, cache=False) for n, p in paths.items()}
    sessions = {n: b._scores_preprocessed for n, b in bundles.items()}  # model.onnx on a normalised batch
    rng = np.random.default_rng(0)
    rows = []
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *input_size)).astype(np.float32)
        times = {n: [] for n in sessions}
        for s in sessions.values():  # warm-up
            for _ in range(3):
                s(x)
        for _ in range(repeats):
            for n, s in sessions.items():
                t0 = time.perf_counter()
                s(x)
                times[n].append(time.perf_counter() - t0)
        base = float(np.median(times["simplecil"]))
        for n, ts in times.items():
            med = float(np.median(ts))
            rows.append({
                "model": n,
                "passes": 1 if n == "simplecil" else 2,
                "batch": bs,
                "median_ms": round(1e3 * med, 3),
                "p90_ms": round(1e3 * float(np.percentile(ts, 90)), 3),
                "images_per_s": round(bs / med, 1),
                "ratio_to_single_pass": round(med / base, 2),
                "onnx_bytes": (paths[n] / "model.onnx").stat().st_size,
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="edgecl-vit-tiny")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_two_pass.json")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(Path(tmp), timing_backbone(args.backbone, args.weights, args.img_size))
        manifest = json.loads((paths["simplecil"] / "manifest.json").read_text())
        input_size = tuple(manifest["preprocess"]["input_size"])
        rows = time_sessions(paths, batch_sizes, args.repeats, args.threads, input_size)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_name(),
            "logical_cores": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": args.threads,
        },
        "backbone": {"name": manifest["backbone"]["name"], "weights": manifest["backbone"]["weights"],
                     "input_size": list(input_size)},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['model']:12s} batch {r['batch']:3d}: {r['median_ms']:9.2f} ms (p90 {r['p90_ms']:.2f}), "
              f"{r['images_per_s']:8.1f} img/s, x{r['ratio_to_single_pass']:.2f} vs single pass")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
