"""torch.distributed vs one process: the same `edgecl train` runs, 1 process and `torchrun` with N gloo ranks.

Each configuration is trained twice through the CLI, ``edgecl train ... --out one/NAME`` and
``torchrun --standalone --nproc-per-node N --no-python edgecl train ... --out two/NAME``; the
saved learner states are compared array by array (largest absolute difference divided by the
array's largest absolute value) and the per-task accuracies must be equal. Wall time of both
is recorded with the load average (the machine is shared, so times are indicative only).
Writes ``<out>/<name>.json`` and ``.md``.

Example: ``python benchmarks/distributed_parity.py --nproc 2`` (results: ``benchmarks/results/distributed-parity.md``
for the CNN runs, ``distributed-parity-vit.md`` for ``--configs ease-vit-1ep l2p-vit-1ep coda-vit-1ep``)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE = ["--dataset", "shapes:20", "--engine", "torch", "--threads", "1"]
CONFIGS = {
    "simplecil": ["--learner", "simplecil"],
    "fecam": ["--learner", "fecam"],
    "ranpac": ["--learner", "ranpac"],
    "ranpac-M128": ["--learner", "ranpac", "--learner-arg", "M=128"],
    "slca-closed-form": ["--learner", "slca", "--learner-arg", "epochs=0"],
    "slca-1ep": ["--learner", "slca", "--learner-arg", "epochs=1"],
    "aper-ssf-2ep": ["--learner", "aper", "--learner-arg", "peft=ssf", "--learner-arg", "epochs=2"],
}
VIT_CONFIGS = {  # --configs ...: the embedded ViT (prompt pools need a ViT)
    "ease-vit-1ep": ["--learner", "ease", "--backbone", "edgecl-vit-tiny", "--learner-arg", "epochs=1"],
    "l2p-vit-1ep": ["--learner", "l2p", "--backbone", "edgecl-vit-tiny", "--learner-arg", "epochs=1"],
    "coda-vit-1ep": ["--learner", "coda_prompt", "--backbone", "edgecl-vit-tiny", "--learner-arg", "epochs=1"],
}


def _edgecl() -> str:
    return str(Path(sys.executable).with_name("edgecl"))


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def compare(one: Path, two: Path) -> dict:
    a, b = np.load(one / "learner_state.npz"), np.load(two / "learner_state.npz")
    diffs = {}
    for key in a:
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        scale = max(float(np.abs(x).max(initial=0.0)), 1e-12)
        diffs[key] = float(np.abs(x - y).max(initial=0.0)) / scale
    m1 = json.loads((one / "run.json").read_text())["metrics"]
    m2 = json.loads((two / "run.json").read_text())["metrics"]
    return {"max_rel_diff": diffs, "metrics_equal": m1 == m2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=[*CONFIGS, *VIT_CONFIGS])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="distributed-parity")
    args = ap.parse_args()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                "--no-python"]
    rows, load = {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            flags = BASE + {**CONFIGS, **VIT_CONFIGS}[name]
            t1 = _run([_edgecl(), "train", *flags, "--out", f"{tmp}/one/{name}"])
            t2 = _run([*torchrun, _edgecl(), "train", *flags, "--out", f"{tmp}/two/{name}"])
            rows[name] = {"flags": flags, "seconds_1proc": t1, f"seconds_{args.nproc}proc": t2,
                          **compare(Path(tmp, "one", name), Path(tmp, "two", name))}
            print(name, json.dumps(rows[name]["max_rel_diff"]), rows[name]["metrics_equal"], flush=True)
    load.append(os.getloadavg()[0])
    report = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "nproc": args.nproc,
              "cpus": os.cpu_count(), "loadavg_before_after": load, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    n = report["nproc"]
    lines = [f"# {n} gloo ranks vs 1 process (`{report['command']}`)", "",
             f"{report['cpus']} CPUs, load average {report['loadavg_before_after'][0]:.1f} -> "
             f"{report['loadavg_before_after'][1]:.1f} (shared machine: times are indicative). Largest relative "
             "difference per saved array (|a - b|max / |a|max), arrays that differ by 0 omitted.", "",
             f"| run | flags | 1 proc s | {n} procs s | accuracies equal | differing arrays |",
             "|---|---|---|---|---|---|"]
    for name, row in report["runs"].items():
        diff = {k: v for k, v in row["max_rel_diff"].items() if v > 0}
        worst = sorted(diff.items(), key=lambda kv: -kv[1])[:3]
        text = ", ".join(f"{k} {v:.1e}" for k, v in worst) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
        lines.append(f"| {name} | `{' '.join(row['flags'][len(BASE):])}` | {row['seconds_1proc']:.1f} | "
                     f"{row[f'seconds_{n}proc']:.1f} | {row['metrics_equal']} | {text or 'none (identical)'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
