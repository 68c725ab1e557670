"""Device cost of each learner's bundle beside SimpleCIL's on the same backbone: size, latency at batch 1 and 32.

For every learner it trains a run (``edgecl train``, the table's protocol; gradient-trained learners with
``--epochs`` epochs, since the cost is the bundle's structure, not its accuracy), exports it (``edgecl export``)
and then, in one fresh process that imports only the runtime, times ``Bundle.predict`` of every bundle in
rotating blocks (``edgecl_runtime.benchmark.interleaved``), so that a busy machine slows them alike and the
ratios to SimpleCIL are taken side by side. Writes ``<out>.json`` and ``<out>.md`` with the commands and machine.

    python benchmarks/bench_cost.py --learners simplecil,ease,l2p --backbone edgecl-vit-tiny \\
        --dataset glyphs:200:within:96 --init-cls 100 --increment 10 --out benchmarks/results/cost-glyphs200-vit
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench_footprint import EDGECL, RESULTS, sh  # the script's folder is on sys.path

BASELINE = "simplecil"


def learner_args(label: str, name: str, epochs: int, extra: dict) -> list[str]:
    """``--learner-arg`` flags: ``epochs`` where the learner has it, then the user's ones for this case."""
    info = json.loads(sh(EDGECL + ["learners", name, "--json"], []))
    args = {"epochs": epochs} if any(h["name"] == "epochs" for h in info["hparams"]) else {}
    args.update(extra.get(label, {}))
    return [f for k, v in args.items() for f in ("--learner-arg", f"{k}={json.dumps(v)}")]


def cases(learners: str) -> dict[str, str]:
    """``LABEL=LEARNER`` or ``LEARNER`` items -> {label: learner}, SimpleCIL first."""
    items = dict(item.split("=", 1) if "=" in item else (item, item) for item in learners.split(",") if item)
    return {BASELINE: BASELINE, **{k: v for k, v in items.items() if k != BASELINE}}


def build(label: str, name: str, a, work: Path, extra: dict) -> dict:
    """Train (unless the run exists) and export one case; returns its bundle path and commands."""
    run, bundle, log = work / label / "run", work / label / "bundle", []
    if not (run / "run.json").exists():
        sh(EDGECL + ["train", "--dataset", a.dataset, "--backbone", a.backbone, "--learner", name,
                     "--init-cls", str(a.init_cls), "--increment", str(a.increment), "--threads", str(a.threads),
                     *learner_args(label, name, a.epochs, extra), "--out", str(run)], log)
    sh(EDGECL + ["export", str(run), str(bundle), "--force"], log)
    return {"bundle": str(bundle), "commands": log}


def time_bundles(bundles: dict[str, str], threads: int, repeats: int) -> dict:
    """Runs in a runtime-only process: sizes and interleaved predict timings at batch 1 and 32 per bundle."""
    import numpy as np

    from edgecl_runtime import Bundle
    from edgecl_runtime.benchmark import bundle_sizes, interleaved, machine

    loaded = {n: Bundle.load(p, device="cpu", threads=threads) for n, p in bundles.items()}
    rng = np.random.default_rng(0)
    _, h, w = next(iter(loaded.values())).input_size
    out = {n: {**bundle_sizes(p), "classes": len(loaded[n].classes), "head": loaded[n].manifest["head"]["kind"]}
           for n, p in bundles.items()}
    for batch in (1, 32):
        images = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        t = interleaved({n: (lambda b=b: b.predict(images)) for n, b in loaded.items()}, repeats)
        for n in loaded:
            out[n][f"predict_b{batch}"] = t[n]
    return {"bundles": out, "machine": machine(), "torch_imported": "torch" in sys.modules}


def ratios(timed: dict) -> dict:
    """Each learner's size and p50 latencies divided by SimpleCIL's."""
    base = timed[BASELINE]
    return {n: {"size": r["bundle_bytes"] / base["bundle_bytes"],
                **{f"b{k}": r[f"predict_b{k}"]["p50_ms"] / base[f"predict_b{k}"]["p50_ms"] for k in (1, 32)}}
            for n, r in timed.items()}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# {Path(result['out']).name}: device cost beside SimpleCIL\n",
             f"Command: `{result['command']}`  ",
             f"Machine: {m['cpu']} ({m['cpu_count']} cores), {result['threads']} runtime thread(s), load average at "
             f"start {result['load_average']}, {result['time']}; the timing process imported torch: "
             f"{result['torch_imported']}\n",
             f"Protocol: {result['dataset']} on {result['backbone']}, first task {result['init_cls']} classes, then "
             f"{result['increment']} per task; gradient-trained learners with {result['epochs']} epoch(s) (the "
             "bundle's structure does not depend on it). Latency: `Bundle.predict` p50 on random images, the bundles "
             "timed in rotating blocks in one process.\n",
             "| learner | head | classes | bundle MB | of which ONNX MB | predict b1 ms | predict b32 ms | "
             "size / SimpleCIL | b1 / SimpleCIL | b32 / SimpleCIL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in result["bundles"].items():
        q = result["ratios"][n]
        lines.append(f"| {n} | {r['head']} | {r['classes']} | {r['bundle_bytes'] / 1e6:.1f} | "
                     f"{r['onnx_bytes'] / 1e6:.1f} | {r['predict_b1']['p50_ms']:.2f} | "
                     f"{r['predict_b32']['p50_ms']:.1f} | x{q['size']:.2f} | x{q['b1']:.2f} | x{q['b32']:.2f} |")
    lines.append("\nPer learner, the commands that made its bundle:\n")
    lines += [f"- {n}: " + "; ".join(f"`{c}`" for c in b["commands"]) for n, b in result["builds"].items()]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", required=True,
                    help="comma-separated LEARNER or LABEL=LEARNER (one learner with other --learner-args); "
                         "simplecil is added first if missing")
    ap.add_argument("--backbone", default="edgecl-vit-tiny")
    ap.add_argument("--dataset", default="glyphs:200:within:96")
    ap.add_argument("--init-cls", type=int, default=100)
    ap.add_argument("--increment", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--learner-args", default="{}", help='JSON: {"label": {"hparam": value}}')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--work", default="/tmp/edgecl-cost")
    ap.add_argument("--out", default=str(RESULTS / "cost"))
    ap.add_argument("--time-only", help=argparse.SUPPRESS)  # internal: JSON of {name: bundle}, runtime-only timing
    return ap.parse_args(argv)


def main() -> None:
    a = parse()
    if a.time_only:
        print(json.dumps(time_bundles(json.loads(a.time_only), a.threads, a.repeats)))
        return
    work, extra, load = Path(a.work) / Path(a.out).name, json.loads(a.learner_args), os.getloadavg()
    builds = {}
    for label, name in cases(a.learners).items():
        print(f"{label} ...", file=sys.stderr, flush=True)
        builds[label] = build(label, name, a, work, extra)
    timing = json.loads(sh([sys.executable, __file__, "--learners", a.learners, "--threads", str(a.threads),
                            "--repeats", str(a.repeats),
                            "--time-only", json.dumps({n: b["bundle"] for n, b in builds.items()})], []))
    result = {"command": "python " + " ".join(shlex.quote(x) for x in sys.argv), "out": a.out,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": [round(x, 2) for x in load],
              **{k: getattr(a, k) for k in ("dataset", "backbone", "init_cls", "increment", "epochs", "threads")},
              "builds": builds, **timing, "ratios": ratios(timing["bundles"])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(a.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
