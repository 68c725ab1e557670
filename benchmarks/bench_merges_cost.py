"""Inference cost of the merge learners (LAE, CoFiMA) against SimpleCIL on the same backbone.

    python benchmarks/bench_merges_cost.py [--backbone NAME] [--batch-sizes 1,32] [--repeats 30] [--threads 2]

Exports SimpleCIL, LAE with adapters (two experts as branches of one graph),
LAE with SSF as modules and folded into the weights (``fold=true``), and
CoFiMA (one merged network), each fitted for one epoch on two tasks of 5
shapes classes (after one task LAE's offline module equals the online one and
onnxruntime merges the identical branches; the cost of a graph does not depend
on how well it is trained otherwise), then times
every bundle's ``model.onnx`` (features and scores) with onnxruntime on CPU,
round-robin (A, B, C, ..., A, B, ...) so that all see the same machine load.
Writes JSON (command, machine, per model and batch size: median / p90 ms,
images/s, ratio to SimpleCIL, model.onnx and bundle bytes) to ``benchmarks/results/``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_two_pass import cpu_name, timing_backbone  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "simplecil": ("simplecil", {}),
    "lae-adapter": ("lae", {"epochs": 1}),
    "lae-ssf": ("lae", {"epochs": 1, "pet": "ssf"}),
    "lae-ssf-folded": ("lae", {"epochs": 1, "pet": "ssf", "fold": True}),
    "cofima": ("cofima", {"epochs": 1}),
}


def export_all(tmp: Path, backbone) -> dict[str, Path]:
    """One bundle per entry of ``MODELS`` on ``backbone`` (a private copy each: CoFiMA tunes it), two tasks each."""
    from edgecl.backbones import backbone_from_state
    from edgecl.data import BatchLoader, make_shapes
    from edgecl.learners import create_learner
    from edgecl_export import export_learner

    spec = backbone.spec
    train, _ = make_shapes(10, 5, 1, seed=0)
    paths = {}
    for label, (name, args) in MODELS.items():
        own = backbone_from_state(spec, {k: v.clone() for k, v in backbone.model.state_dict().items()})
        learner = create_learner(name, own, **args)
        for task in (train.select_classes(range(5)), train.select_classes(range(5, 10))):
            learner.fit_task(BatchLoader(task, spec.input_size, spec.mean, spec.std, 16))
        paths[label] = export_learner(learner, train.class_names, tmp / label).path
    return paths


def time_models(paths: dict[str, Path], batch_sizes, repeats: int, threads: int, input_size) -> list[dict]:
    """Median / p90 time of one scoring run (``model.onnx``: features and scores) per bundle and batch size."""
    from edgecl_runtime import Bundle

    bundles = {n: Bundle.load(p, device="cpu", threads=threads, cache=False) for n, p in paths.items()}
    rows = []
    for bs in batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, *input_size)).astype(np.float32)
        times = {n: [] for n in bundles}
        for _ in range(repeats + 3):  # the first 3 rounds warm up
            for n, b in bundles.items():
                t0 = time.perf_counter()
                b._scores_preprocessed(x)
                times[n].append(time.perf_counter() - t0)
        base = float(np.median(times["simplecil"][3:]))
        for n, ts in times.items():
            med = float(np.median(ts[3:]))
            rows.append({"model": n, "batch": bs, "median_ms": round(1e3 * med, 3),
                         "p90_ms": round(1e3 * float(np.percentile(ts[3:], 90)), 3),
                         "images_per_s": round(bs / med, 1), "ratio_to_simplecil": round(med / base, 2),
                         "model_onnx_bytes": (paths[n] / "model.onnx").stat().st_size,
                         "bundle_bytes": sum(f.stat().st_size for f in paths[n].rglob("*") if f.is_file())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="edgecl-vit-tiny")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_merges_cost.json")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(Path(tmp), timing_backbone(args.backbone, args.weights, args.img_size))
        manifest = json.loads((paths["simplecil"] / "manifest.json").read_text())
        input_size = tuple(manifest["preprocess"]["input_size"])
        rows = time_models(paths, [int(b) for b in args.batch_sizes.split(",")], args.repeats, args.threads, input_size)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                    "platform": platform.platform(), "python": platform.python_version(), "onnxruntime": ort.__version__,
                    "provider": "CPUExecutionProvider", "intra_op_threads": args.threads},
        "backbone": {"name": manifest["backbone"]["name"], "input_size": list(input_size)},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['model']:15s} batch {r['batch']:3d}: {r['median_ms']:9.2f} ms (p90 {r['p90_ms']:.2f}), "
              f"{r['images_per_s']:8.1f} img/s, x{r['ratio_to_simplecil']:.2f} SimpleCIL, "
              f"bundle {r['bundle_bytes'] / 1e6:.2f} MB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
