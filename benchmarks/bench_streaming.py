"""Peak memory of training from WebDataset shards vs from an in-memory data set, at 1x and 10x the data.

For each scale the generated shapes set (``--classes`` classes, ``--train-per-class`` x scale training and
``--test-per-class`` x scale test images, 32 px) is written to tar shards (``edgecl.data.stream.
write_split_shards``). Each (scale, mode) then runs in a fresh subprocess: the class-incremental protocol
(B10-Inc10) with each of ``--learners`` in turn on one embedding cache (cold for the first learner, read
by the next ones), with the dataset ``wds:SHARDS`` (``stream`` mode: images stay on disk, embeddings are
written to the memory-mapped cache batch by batch) or ``shapes:N`` (``memory`` mode: the same images,
generated in memory). Peak RSS is the child's ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, after the
backbone is loaded (baseline) and after each learner; this process imports neither torch nor the data (the
shards are written in a subprocess too), since Linux carries ru_maxrss over from the parent into the child.

    python benchmarks/bench_streaming.py                      # 1x and 10x, simplecil + ranpac
    python benchmarks/bench_streaming.py --scales 1,10,20 --modes stream

Writes benchmarks/results/bench_streaming.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def vm_hwm_mb() -> float:
    """This process's own peak RSS from /proc (VmHWM): a cross-check of ru_maxrss, which Linux carries over
    from the parent across fork + exec (the parent here stays small: it imports neither torch nor data)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(spec: dict) -> dict:
    """One (scale, mode): the learners in turn on one fresh embedding cache; peak RSS along the way."""
    import torch

    import edgecl.experiment as experiment
    from edgecl.zoo import create_backbone

    torch.set_num_threads(spec["threads"])
    experiment.default_cache_dir = lambda: Path(spec["cache"])  # a cold cache for this run only
    create_backbone(spec["backbone"])
    out = {"baseline_mb": peak_mb(), "learners": []}
    for learner in spec["learners"]:
        t0 = time.perf_counter()
        cfg = experiment.RunConfig(dataset=spec["dataset"], backbone=spec["backbone"], learner=learner,
                                   init_cls=10, increment=10, train_per_class=spec["train_per_class"],
                                   test_per_class=spec["test_per_class"], engine=spec["engine"])
        res = experiment.run_experiment(cfg, log=lambda s: None)
        out["learners"].append({"learner": learner, "seconds": round(time.perf_counter() - t0, 1),
                                "peak_mb": round(peak_mb(), 1), "last_top1": round(res.metrics.last, 2),
                                "cache": res.learner.features.store_counts()})
        del res
    out["peak_mb"], out["vm_hwm_mb"] = round(peak_mb(), 1), vm_hwm_mb()
    out["cache_mb"] = round(sum(p.stat().st_size for p in Path(spec["cache"]).glob("*.emb")) / 2**20, 1)
    return out


def write_shards(spec: dict) -> dict:
    from edgecl.data import make_shapes
    from edgecl.data.stream import write_split_shards

    return write_split_shards(*make_shapes(spec["classes"], spec["train_pc"], spec["test_pc"], seed=0), spec["out"],
                              spec["per_shard"])


def make_shards(work: Path, classes: int, train_pc: int, test_pc: int, per_shard: int) -> Path:
    """The generated set written as shards, in a subprocess (this process stays small: see ``vm_hwm_mb``)."""
    out = work / f"shards-{classes}x{train_pc}"
    if not (out / "classes.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        run_child({"classes": classes, "train_pc": train_pc, "test_pc": test_pc, "out": str(out),
                   "per_shard": per_shard}, "--child-shards")
    return out


def run_child(spec: dict, flag: str = "--child") -> dict:
    proc = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"child failed ({spec['dataset']}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args, work: Path) -> list[dict]:
    rows = []
    for scale in args.scales:
        train_pc, test_pc = args.train_per_class * scale, args.test_per_class * scale
        shards = make_shards(work, args.classes, train_pc, test_pc, args.per_shard)
        images = args.classes * (train_pc + test_pc)
        for mode in args.modes:
            dataset = f"wds:{shards}" if mode == "stream" else f"shapes:{args.classes}"
            cache = work / f"cache-{scale}-{mode}"
            shutil.rmtree(cache, ignore_errors=True)
            spec = {"dataset": dataset, "backbone": args.backbone, "learners": args.learners, "engine": args.engine,
                    "train_per_class": train_pc, "test_per_class": test_pc, "threads": args.threads, "cache": str(cache)}
            t0 = time.perf_counter()
            result = run_child(spec)
            rows.append({"scale": scale, "mode": mode, "images": images, "image_mb": round(images * 32 * 32 * 3 / 2**20, 1),
                         "shards_mb": round(sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20, 1),
                         "wall_s": round(time.perf_counter() - t0, 1), **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def growth(rows: list[dict], mode: str) -> dict | None:
    mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["scale"])
    if len(mine) < 2:
        return None
    lo, hi = mine[0], mine[-1]
    per_learner = {a["learner"]: [a["peak_mb"], b["peak_mb"]] for a, b in zip(lo["learners"], hi["learners"])}
    return {"from_scale": lo["scale"], "to_scale": hi["scale"], "peak_mb": [lo["peak_mb"], hi["peak_mb"]],
            "growth_mb": round(hi["peak_mb"] - lo["peak_mb"], 1),
            "growth_percent": round(100 * (hi["peak_mb"] - lo["peak_mb"]) / lo["peak_mb"], 1),
            "above_baseline_mb": [round(lo["peak_mb"] - lo["baseline_mb"], 1), round(hi["peak_mb"] - hi["baseline_mb"], 1)],
            "peak_after_learner_mb": per_learner}


NOTES = [
    "The peak after a learner is the process's peak so far: the first learner's includes embedding the data "
    "(stream: images read and decoded a batch at a time, rows written to the cache file as they come).",
    "`memory` mode's peak includes generating the images in the process (the shapes renderer's working "
    "memory), as loading a data set into memory does; `stream` reads the shards written beforehand by another process.",
    "RanPAC's peak above SimpleCIL's is its head and per-task working set: the M x M float64 Gram matrix, its "
    "inverse and the eigendecomposition for lambda (M = 2048: ~250 MB whatever the data), plus the random "
    "features H of one task (rows x M float64, and copies for the validation split): 400 rows per task at 1x, "
    "4,000 at 10x. That part grows with the rows of one task, not with the data set, and is the learner's "
    "(edgecl/learners/closed_form.py), not the data path's.",
]


def markdown(report: dict) -> str:
    lines = [
        "# Streaming: peak memory as the data grows",
        "",
        f"`{report['command']}` on {report['machine']}.",
        "",
        f"Generated shapes, {report['config']['classes']} classes at 32 px, B10-Inc10, backbone "
        f"{report['config']['backbone']} (engine {report['config']['engine']}); learners "
        f"{', '.join(report['config']['learners'])} in turn in one subprocess per row, on one cold embedding cache "
        "(the first learner embeds, the next read the memory-mapped matrices). `stream`: `wds:` shards, images on "
        "disk; `memory`: the same images generated in memory (`shapes:N`). Peak RSS = `ru_maxrss` of the subprocess; "
        "baseline = after loading the backbone, before any data.",
        "",
        "| scale | mode | images | pixels in memory (MB) | shards (MB) | embeddings on disk (MB) | baseline (MB) | "
        "peak RSS (MB) | VmHWM (MB) | per learner: peak MB / s / last top-1 / cache hits-misses |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        per = "; ".join(f"{x['learner']} {x['peak_mb']:.0f} / {x['seconds']:.0f} s / {x['last_top1']:.2f}% / "
                        f"{x['cache']['hits']}-{x['cache']['misses']}" for x in r["learners"])
        lines.append(f"| {r['scale']}x | {r['mode']} | {r['images']} | {r['image_mb']} | {r['shards_mb']} | "
                     f"{r['cache_mb']} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | {r['vm_hwm_mb']:.0f} | {per} |")
    lines += ["", "## Growth", ""]
    for mode, g in report["growth"].items():
        if g:
            per = ", ".join(f"after {name} {a:.0f} -> {b:.0f} MB (+{b - a:.0f})"
                            for name, (a, b) in g.get("peak_after_learner_mb", {}).items())
            lines.append(f"- **{mode}**: {g['from_scale']}x -> {g['to_scale']}x the data: peak RSS {g['peak_mb'][0]:.0f} -> "
                         f"{g['peak_mb'][1]:.0f} MB (+{g['growth_mb']:.0f} MB, +{g['growth_percent']:.1f}%); above the "
                         f"backbone baseline {g['above_baseline_mb'][0]:.0f} -> {g['above_baseline_mb'][1]:.0f} MB; {per}.")
    return "\n".join(lines + ["", "## Notes", ""] + [f"- {n}" for n in NOTES] + [""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-shards", help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--train-per-class", type=int, default=40, help="at 1x")
    ap.add_argument("--test-per-class", type=int, default=10, help="at 1x")
    ap.add_argument("--scales", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["stream", "memory"])
    ap.add_argument("--learners", type=lambda s: s.split(","), default=["simplecil", "ranpac"])
    ap.add_argument("--backbone", default="edgecl-resnet10t")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--per-shard", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="Where shards and caches go (default: a temporary folder).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--render", metavar="JSON", help="Only rewrite the markdown (and growth) of a results JSON.")
    args = ap.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report["growth"] = {mode: growth(report["rows"], mode) for mode in report["config"]["modes"]}
        Path(args.render).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.render).with_suffix(".md").write_text(markdown(report))
        return
    if args.child or args.child_shards:
        print(json.dumps(child(json.loads(args.child)) if args.child else write_shards(json.loads(args.child_shards))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgecl-bench-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = measure(args, work)
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
                   f"Python {platform.python_version()}, {platform.platform()}",
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "child_shards", "out", "workdir")},
        "rows": rows,
        "growth": {mode: growth(rows, mode) for mode in args.modes},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_streaming.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench_streaming.md").write_text(markdown(report))
    print(markdown(report))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
