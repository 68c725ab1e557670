"""Runtime speed and footprint targets (issue 8): fp32 / INT8 bundles vs torch, per backbone.

    python benchmarks/bench_runtime.py [--models resnet10t,mobilenetv2,vit-tiny] [--threads 2]
                                       [--repeats 30] [--work /tmp/edgecl-bench] [--out benchmarks/results]

For each backbone: train SimpleCIL (B-m Inc-n over the data set), export an fp32
and an INT8 bundle (static QDQ, 128 calibration images from the training data),
then per bundle run ``edgecl bench``'s measurements: the device process
(``edgecl_runtime.benchmark`` in a fresh interpreter: cold start, p50/p95, throughput,
peak RSS, add-class split), top-1 on the data set's test split, and ONNX vs the
torch learner (eager, and ``torch.compile`` for the fp32 bundle) timed in turn
on the same preprocessed images with the same number of threads.

* ``resnet10t``: the embedded 32 px default on ``shapes`` (a floor);
* ``mobilenetv2``: ``mobilenetv2-imagenet`` at 224 px on ``glyphs:100:cross``
  (train on upright fonts, test on italic ones);
* ``vit-tiny``: the embedded hybrid ViT ``edgecl-vit-tiny`` (32 px, committed weights)
  on ``glyphs:100:cross``, only when its shipped weights exist.

Runs and bundles are kept in ``--work`` and reused. Writes
``runtime-<models>.json`` (everything, with the command and machine) and
``runtime-<models>.md`` (the targets, met or missed by how much) to ``--out``. Timings on a shared machine are noisy:
ratios are measured interleaved, absolute numbers are not to be trusted then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "resnet10t": {"backbone": "edgecl-resnet10t", "dataset": "shapes", "init_cls": 10, "increment": 10},
    "mobilenetv2": {"backbone": "mobilenetv2-imagenet", "dataset": "glyphs:100:cross", "init_cls": 20, "increment": 20},
    "vit-tiny": {"backbone": "edgecl-vit-tiny", "dataset": "glyphs:100:cross", "init_cls": 20, "increment": 20},
}
PRECISIONS = ("fp32", "int8")
FLOOR = {"resnet10t"}  # measured as a floor: the targets are for MobileNetV2 at 224 px and the ViT


def vit_available() -> bool:
    """The embedded ViT is benchmarked only with its shipped weights (re-making them takes ~17 min)."""
    from edgecl.zoo import embedded

    weights = Path(embedded.__file__).parent / "weights"
    return any("vit" in p.name for p in weights.glob("*")) if weights.is_dir() else False


def prepare(model: str, cfg: dict, work: Path, log, allow_divergence: bool = False) -> tuple[Path, dict[str, Path]]:
    """Run directory and one bundle per precision (reused when present).

    Training and export use one torch thread: on a shared machine, OpenMP
    barriers made two threads many times slower (measured); timing uses ``--threads``.
    """
    import torch

    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tag = f"{model}-{cfg['dataset'].replace(':', '_')}-B{cfg['init_cls']}-Inc{cfg['increment']}"
        run_dir = work / tag / "run"
        if not (run_dir / "run.json").is_file():
            log(f"[{model}] training SimpleCIL on {cfg['dataset']} with {cfg['backbone']}")
            run_experiment(RunConfig(dataset=cfg["dataset"], backbone=cfg["backbone"], init_cls=cfg["init_cls"],
                                     increment=cfg["increment"]), out_dir=run_dir, log=log)
        bundles = {}
        for precision in PRECISIONS:
            path = work / tag / precision
            if not (path / "manifest.json").is_file():
                log(f"[{model}] exporting {precision}")
                export_run(run_dir, path, precision=precision, overwrite=True,
                           precision_options={"allow_divergence": allow_divergence})
            bundles[precision] = path
    finally:
        torch.set_num_threads(threads)
    return run_dir, bundles


def bench_model(model: str, cfg: dict, work: Path, threads: int, repeats: int, compile: bool, log,
                allow_divergence: bool = False) -> dict:
    from edgecl.evaluation import compare_torch
    from edgecl_runtime.cli.bench import bundle_accuracy, device_benchmark
    from edgecl_runtime import Bundle

    run_dir, bundles = prepare(model, cfg, work, log, allow_divergence)
    out: dict = {"model": model, **cfg, "bundles": {}}
    for precision, path in bundles.items():
        log(f"[{model}] {precision}: device process")
        dev = device_benchmark(path, "cpu", threads, repeats, 32)
        b = Bundle.load(path, device="cpu", threads=threads)
        log(f"[{model}] {precision}: accuracy and torch comparison")
        acc = bundle_accuracy(b, cfg["dataset"], "test")
        torch_cmp = compare_torch(b, run_dir, threads, repeats, 32, compile=compile and precision == "fp32")
        manifest = json.loads((path / "manifest.json").read_text())
        out["bundles"][precision] = {"device": dev, "accuracy": acc, "torch": torch_cmp,
                                     "precision_check": manifest.get("precision", {}).get("check")}
        log(f"[{model}] {precision}: top-1 {100 * acc['top1']:.2f}%, predict b1 {dev['predict_b1']['p50_ms']:.2f} ms, "
            + ", ".join(f"b{n} x{r['speedup_vs_eager']:.2f} vs eager" for n, r in torch_cmp["batch_sizes"].items()))
    return out


def targets(result: dict) -> list[dict]:
    """Each target of the issue: measured value, limit, met?"""
    rows = []

    def add(model, name, value, limit, ok, unit="", target=True):
        """``target=False``: a figure shown beside a target, not one of the issue's targets."""
        rows.append({"model": model, "target": name, "value": value, "limit": limit, "met": bool(ok), "unit": unit,
                     "applies": target and model not in FLOOR})

    for m in result["models"]:
        bs = m["bundles"]
        for n in ("1", "32"):
            for stat, key in (("p50", "speedup_vs_eager"), ("fastest calls", "speedup_vs_eager_min")):
                r = bs["int8"]["torch"]["batch_sizes"][n][key]
                add(m["model"], f"INT8 vs torch eager fp32, batch {n} ({stat})", r, 2.0, r >= 2.0, "x faster")
                r = bs["fp32"]["torch"]["batch_sizes"][n][key]
                add(m["model"], f"fp32 vs torch eager, batch {n} ({stat})", r, 1.0, r >= 1.0, "x faster")
        drop = 100 * (bs["fp32"]["accuracy"]["top1"] - bs["int8"]["accuracy"]["top1"])
        add(m["model"], f"INT8 top-1 drop vs fp32 on {m['dataset']} test", drop, 0.5, drop <= 0.5, "pt")
        for p, b in bs.items():
            d = b["device"]
            add(m["model"], f"{p} peak RSS <= 2 x ONNX + 100 MiB, batch 1", d["peak_rss_batch1_mib"], d["rss_target_mib"],
                d["peak_rss_batch1_mib"] <= d["rss_target_mib"], "MiB")
            add(m["model"], f"{p} peak RSS after batch {d['batch_size']} (activations of the batch; not the target)",
                d["peak_rss_mib"], d["rss_target_mib"], d["peak_rss_mib"] <= d["rss_target_mib"], "MiB", target=False)
        a = bs["fp32"]["device"]["add_class"]
        add(m["model"], "add-class head update, 5 examples (prototypes)", a["head_update_ms"], 5.0,
            a["head_update_ms"] <= 5.0, "ms")
        add(m["model"], "add-class update incl. journal + fsync, 5 examples (not a target: disk)", a["update_ms"], 5.0,
            a["update_ms"] <= 5.0, "ms", target=False)
    imp = result["models"][0]["bundles"]["fp32"]["device"]["import_runtime_s"]
    add("-", "import runtime", imp, 0.5, imp < 0.5, "s")
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Runtime benchmark (issue 8)", "",
        f"`{result['command']}` at {result['time']}, {result['elapsed_s']:.0f} s.", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores ({', '.join(m['isa'])}), onnxruntime {m['onnxruntime']}, "
        f"torch {result['torch']}, {result['threads']} threads for both. {result['note']}", "",
        "ONNX vs torch columns: speed-up at batch 1 / batch 32, p50 (fastest calls in brackets).", "",
        "| model | bundle | top-1 | predict b1 p50 / p95 (ms) | b32 images/s | ONNX vs eager b1 / b32 | "
        "vs torch.compile b1 / b32 | cold start (ms) | peak RSS b1 / b32 (MiB) | ONNX (MiB) | add-class embed + update (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mod in result["models"]:
        for p, b in mod["bundles"].items():
            d, t = b["device"], b["torch"]["batch_sizes"]
            comp = " / ".join(f"x{t[n]['speedup_vs_compile']:.2f}" if "speedup_vs_compile" in t[n] else "-" for n in t)
            lines.append(
                f"| {mod['model']} | {p} | {100 * b['accuracy']['top1']:.2f}% | {d['predict_b1']['p50_ms']:.2f} / "
                f"{d['predict_b1']['p95_ms']:.2f} | {d['throughput_images_per_s']:.0f} | "
                + " / ".join(f"x{t[n]['speedup_vs_eager']:.2f} (x{t[n]['speedup_vs_eager_min']:.2f})" for n in t)
                + f" | {comp} | {1e3 * d['cold_start_s']:.0f} | {d['peak_rss_batch1_mib']:.0f} / {d['peak_rss_mib']:.0f} | {d['onnx_bytes'] / 2**20:.1f} | "
                f"{d['add_class']['embed_ms']:.1f} + {d['add_class']['update_ms']:.1f} |"
            )
    lines += ["", "| model | target | measured | limit | met |", "|---|---|---|---|---|"]
    for r in result["targets"]:
        met = "yes" if r["met"] else "no"
        met = met if not r.get("applies", True) else ("yes" if r["met"] else "**no**")
        label = "" if r.get("applies", True) else (" (floor: information only)" if r["model"] in FLOOR else " (information)")
        lines.append(f"| {r['model']} | {r['target']} | {r['value']:.3g} {r['unit']} | {r['limit']:.3g} | {met}{label} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="Comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="Skip torch.compile.")
    ap.add_argument("--work", default="/tmp/edgecl-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="A remark written with the results (e.g. 'machine shared').")
    ap.add_argument("--dataset", default=None, help="Override the data set of every model (e.g. glyphs:20:cross).")
    ap.add_argument("--init-cls", type=int, default=None)
    ap.add_argument("--increment", type=int, default=None)
    ap.add_argument("--allow-divergence", action="store_true",
                    help="Keep an INT8 export that the exporter flags as diverging from fp32 (recorded).")
    args = ap.parse_args()
    overrides = {k: v for k, v in (("dataset", args.dataset), ("init_cls", args.init_cls),
                                   ("increment", args.increment)) if v is not None}

    import torch

    from edgecl_runtime.benchmark import machine

    torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else [m for m in MODELS if m != "vit-tiny" or vit_available()]
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = {"command": " ".join(["python", *sys.argv]), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "torch": torch.__version__, "threads": args.threads, "note": args.note,
              "skipped": [] if "vit-tiny" in models else ["vit-tiny: no shipped weights (edgecl/zoo/weights)"],
              "models": [bench_model(m, {**MODELS[m], **overrides}, Path(args.work), args.threads, args.repeats,
                                     not args.no_compile, log, args.allow_divergence) for m in models]}
    result["elapsed_s"] = time.time() - t0
    result["targets"] = targets(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "runtime-" + "+".join(models)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
