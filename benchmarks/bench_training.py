"""Training speed: end-to-end ``run_experiment`` before/after the embedding service, and embedding throughput.

Parts (``--parts``, default all):

* ``e2e``: the same ``RunConfig`` (default: SimpleCIL, glyphs:200:cross,
  mobilenetv2-imagenet at 96 px, B100-Inc10) in fresh processes, interleaved
  per round:
  ``before`` (the code of ``--before-commit``, default the merge base with
  main, unpacked with ``git archive`` and put first on ``PYTHONPATH``),
  ``torch-nocache`` (this code, ``engine=torch``, no embedding cache: the old
  computation through the new path), ``cold`` (``engine=auto``, empty
  embedding cache: includes choosing the engine) and ``warm`` (the same cache
  again: a second learner or run on the same backbone and data). Wall time of
  each process and its accuracy after every task, which must be identical to
  ``before`` at the printed precision (2 decimals).
* ``throughput``: images/s at batch 32 of the training side's embedding
  (``FeatureExtractor``, no cache, the engine ``auto`` picked) against the
  runtime's ``Bundle.predict`` on a bundle exported from the ``warm`` run,
  interleaved; the split of the training side's time into preprocessing and
  engine; and the engine candidates' timings per backbone (``--engine-backbones``).

Every process uses ``--threads`` torch and onnxruntime threads; the load
average is recorded before and after (the machine is shared). Writes
``<out>/<name>.json`` and ``.md``.

Example: ``python benchmarks/bench_training.py --threads 2 --rounds 1``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

DRIVER = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
from edgecl.experiment import RunConfig, run_experiment
r = run_experiment(RunConfig(**json.loads(sys.argv[1])), out_dir=sys.argv[2] or None, log=lambda s: None)
f = getattr(r.learner, "features", None)
print(json.dumps({{"accuracy": [round(a, 2) for a in r.metrics.overall], "last": round(r.metrics.last, 2),
                  "average_incremental": round(r.metrics.average_incremental, 2),
                  "in_process_s": time.perf_counter() - t0, "embeddings": f.summary() if f else None}}))
"""


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def before_tree(commit: str, dest: Path) -> list[str]:
    """``commit``'s sources under ``dest``; the ``PYTHONPATH`` entries that import them first."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return [str(dest), str(dest / "runtime"), str(dest / "export")]


def linked_cache(real: Path, dest: Path) -> Path:
    """A cache directory sharing ``real``'s backbones and glyphs but with its own (empty) embeddings."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("backbones", "glyphs"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (dest / sub).symlink_to(real / sub)
    return dest


def run_variant(config: dict, threads: int, env: dict, cwd: Path, out_dir: str = "") -> dict:
    """One run in a fresh process started in ``cwd`` (not the repository: ``python -c`` imports from its
    working directory first); wall time and the CPU time (user + system) of the process."""
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(threads=threads), json.dumps(config), out_dir],
                          env=env, capture_output=True, text=True, cwd=cwd)
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"variant failed:\n{proc.stderr[-3000:]}")
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "loadavg_after": loadavg()}


def e2e(args, work: Path) -> dict:
    from edgecl.paths import cache_dir

    base = {"dataset": args.dataset, "backbone": args.backbone, "img_size": args.img_size, "learner": args.learner,
            "init_cls": args.init_cls, "increment": args.increment}
    env = dict(os.environ)
    before_env = (dict(env, PYTHONPATH=os.pathsep.join(before_tree(args.before_commit, work / "before")))
                  if "before" in args.variants.split(",") else None)
    rounds = []
    for r in range(args.rounds):
        cache = linked_cache(cache_dir(), work / f"cache-{r}")
        after_env = dict(env, EDGECL_CACHE_DIR=str(cache))
        row = {"loadavg_before": loadavg()}
        variants = {
            "before": lambda: run_variant(base, args.threads, before_env, work),
            "torch-nocache": lambda: run_variant({**base, "engine": "torch", "embedding_cache": False}, args.threads,
                                                 env, work),
            "cold": lambda: run_variant(base, args.threads, after_env, work),
            "warm": lambda: run_variant(base, args.threads, after_env, work, out_dir=str(work / "run-warm")),
        }
        for v in args.variants.split(","):
            row[v] = variants[v]()
        rounds.append(row)
        print(json.dumps(row), flush=True)
    variants = args.variants.split(",")
    wall = {v: statistics.median(row[v]["wall_s"] for row in rounds) for v in variants}
    cpu = {v: statistics.median(row[v]["cpu_s"] for row in rounds) for v in variants}
    same = all(row[v]["accuracy"] == row[variants[0]]["accuracy"] for row in rounds for v in variants)  # as the first
    speedups = {f"speedup_{v}": round(wall["before"] / wall[v], 2) for v in variants if v != "before" and "before" in wall}
    cpu_speedups = {f"cpu_speedup_{v}": round(cpu["before"] / cpu[v], 2) for v in variants if v != "before" and "before" in cpu}
    return {"config": base, "rounds": rounds, "median_wall_s": wall, "median_cpu_s": cpu, "identical_accuracy": same,
            **speedups, **cpu_speedups}


def throughput(args, work: Path) -> dict:
    import numpy as np
    import torch
    from edgecl.workflows import export_run
    from edgecl_runtime import Bundle
    from edgecl_runtime.preprocess import preprocess

    from edgecl.data import load_dataset
    from edgecl.features import FeatureExtractor
    from edgecl.features.engines import pick_engine
    from edgecl.rundir import load_run

    torch.set_num_threads(args.threads)

    run_dir = work / "run-warm"
    if not run_dir.is_dir():
        from edgecl.experiment import RunConfig, run_experiment

        run_experiment(RunConfig(dataset=args.dataset, backbone=args.backbone, img_size=args.img_size,
                                 init_cls=args.init_cls, increment=args.increment), out_dir=run_dir, log=lambda s: None)
    export_run(run_dir, work / "bundle")
    bundle = Bundle.load(work / "bundle", device="cpu", threads=args.threads)
    _, learner = load_run(run_dir)
    spec = learner.backbone.spec
    _, test = load_dataset(args.dataset)
    images = test.images[: args.images]
    sample = preprocess(images[:32], spec.input_size, spec.mean, spec.std)
    kind, _, timings = pick_engine(learner.backbone, sample, args.threads)
    fx = FeatureExtractor(spec.input_size, spec.mean, spec.std, batch_size=32, engine=kind)
    module = learner.embedding_module()
    fx.embed(module, test, np.arange(64))  # builds the engine
    bundle.predict(images[:64])
    t_train, t_runtime, t_prep = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fx.embed(module, test, np.arange(len(images)))
        t_train.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, len(images), 32):
            bundle.predict(images[i : i + 32])
        t_runtime.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, len(images), 32):
            preprocess(images[i : i + 32], spec.input_size, spec.mean, spec.std)
        t_prep.append(time.perf_counter() - t0)
    n = len(images)
    train_ips, runtime_ips = n / statistics.median(t_train), n / statistics.median(t_runtime)
    return {
        "engine": kind, "engine_timings_batch32_s": timings, "images": n, "repeats": args.repeats,
        "training_embed_images_per_s": round(train_ips, 1), "runtime_predict_images_per_s": round(runtime_ips, 1),
        "ratio": round(train_ips / runtime_ips, 3),
        "preprocess_share_of_training_embed": round(statistics.median(t_prep) / statistics.median(t_train), 3),
        "engines_by_backbone": engines_by_backbone(args),
    }


def engines_by_backbone(args) -> dict:
    """``pick_engine`` timings (batch 32, random input) for each of ``--engine-backbones``."""
    import numpy as np

    from edgecl.zoo import create_backbone
    from edgecl.features.engines import pick_engine

    out = {}
    for item in filter(None, args.engine_backbones.split(",")):
        name, _, size = item.partition("@")
        bb = create_backbone(name, img_size=int(size) if size else None)
        x = np.random.default_rng(0).standard_normal((32, *bb.spec.input_size)).astype(np.float32)
        kind, _, timings = pick_engine(bb, x, args.threads)
        out[item] = {"picked": kind, "seconds_batch32": timings}
    return out


def markdown(report: dict) -> str:
    lines = [f"# {report['name']}", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; load average before {report['loadavg_before']}, after {report['loadavg_after']}.", "",
             *[p for note in report.get("notes", []) for p in (note, "")]]
    e = report.get("e2e")
    if e:
        lines += ["## End to end", "", f"Config: `{json.dumps(e['config'])}`, {len(e['rounds'])} round(s), variants "
                  "interleaved in each round, each in a fresh process.", "",
                  "| variant | median wall (s) | median CPU (s) | last | avg-inc | embeddings |", "|---|---|---|---|---|---|"]
        for v, wall in e["median_wall_s"].items():
            run = e["rounds"][-1][v]
            lines.append(f"| {v} | {wall:.1f} | {e['median_cpu_s'][v]:.1f} | {run['last']:.2f} | "
                         f"{run['average_incremental']:.2f} | {run['embeddings'] or '(code before the service)'} |")
        speedups = ", ".join(f"{k[len('speedup_'):]} {v}x" for k, v in e.items() if k.startswith("speedup_"))
        cpu_speedups = ", ".join(f"{k[len('cpu_speedup_'):]} {v}x" for k, v in e.items() if k.startswith("cpu_speedup_"))
        lines += ["", f"Speed-up over before, wall: {speedups}; CPU time: {cpu_speedups}. "
                  f"Accuracy after every task identical in all variants: {e['identical_accuracy']}.", ""]
    t = report.get("throughput")
    if t:
        lines += ["## Embedding throughput at batch 32", "",
                  f"Training side (FeatureExtractor, engine {t['engine']}, with preprocessing): "
                  f"{t['training_embed_images_per_s']} images/s; runtime Bundle.predict: {t['runtime_predict_images_per_s']} "
                  f"images/s; ratio {t['ratio']}. Preprocessing is {100 * t['preprocess_share_of_training_embed']:.0f}% "
                  "of the training side's time.", "", "Engine candidates (seconds per batch of 32; errors as text):", ""]
        for name, row in t["engines_by_backbone"].items():
            lines.append(f"- {name}: picked {row['picked']}; " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row["seconds_batch32"].items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="bench-training")
    p.add_argument("--parts", default="e2e,throughput")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", default="before,torch-nocache,cold,warm",
                   help="e2e variants, in this order in each round (cold must come before warm)")
    p.add_argument("--dataset", default="glyphs:200:cross")
    p.add_argument("--backbone", default="mobilenetv2-imagenet")
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--learner", default="simplecil")
    p.add_argument("--init-cls", type=int, default=100)
    p.add_argument("--increment", type=int, default=10)
    p.add_argument("--before-commit", default=None, help="default: git merge-base HEAD main")
    p.add_argument("--images", type=int, default=1024, help="throughput: test images embedded per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engine-backbones", default="mobilenetv2-imagenet@96,edgecl-resnet10t,edgecl-vit-tiny")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--note", action="append", default=[], help="a paragraph for the .md (kept in the .json)")
    p.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json (with --note added)")
    args = p.parse_args()
    if args.before_commit is None and "before" in args.variants.split(","):
        args.before_commit = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                            capture_output=True, text=True).stdout.strip()
    import platform

    if args.table_only:
        path = Path(args.out) / f"{args.name}.json"
        report = json.loads(path.read_text())
        report["notes"] = report.get("notes", []) + args.note
        path.write_text(json.dumps(report, indent=1) + "\n")
        (Path(args.out) / f"{args.name}.md").write_text(markdown(report))
        return
    report = {"name": args.name, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
              "before_commit": args.before_commit, "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
              "loadavg_before": loadavg(), "notes": args.note}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        if "e2e" in args.parts:
            report["e2e"] = e2e(args, work)
        if "throughput" in args.parts:
            report["throughput"] = throughput(args, work)
    report["loadavg_after"] = loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
