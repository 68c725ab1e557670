"""One results grid run serially and as Ray tasks on a local Ray instance: wall time and equality of every run.

Each mode starts from an empty embedding cache of its own (so both compute every
embedding; in the Ray mode concurrent runs share theirs through the cache's locks).
Writes ``<out>/<name>.json`` (both reports' runs, wall times, the comparison, command,
machine) and ``<name>.md``. Equal means every run record equal but for the fields
that say where and when it ran (``edgecl.grid.VOLATILE_FIELDS``).

    python benchmarks/bench_grid_ray.py --name grid-ray --learners simplecil,ranpac,fecam \\
        --datasets shapes:60 --protocols B0-Inc10,B50%-Inc10 --seeds 1993,1994,1995 --ray-num-cpus 2
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_mode(spec, executor_args: tuple | None, threads: int, cache: Path) -> tuple[dict, float]:
    """The report of ``spec`` (serial if ``executor_args`` is None, else ``RayExecutor(*executor_args)``) and its
    wall time, embedding into ``cache``; the Ray instance is started inside the timing and shut down after."""
    from edgecl.grid import RayExecutor, SerialExecutor, run_grid

    os.environ["EDGECL_CACHE_DIR"] = str(cache)  # before Ray starts: its workers inherit it
    t0 = time.perf_counter()
    executor = SerialExecutor() if executor_args is None else RayExecutor(*executor_args)
    try:
        report = run_grid(spec, executor, {"executor": executor.describe()}, threads=threads,
                          log=lambda s: print(s, flush=True))
    finally:
        executor.close()
    return report, time.perf_counter() - t0


def compare(serial: list[dict], ray: list[dict]) -> dict[str, Any]:
    from edgecl.grid import outcome

    equal = sum(outcome(a) == outcome(b) for a, b in zip(serial, ray))
    diff = max((abs(x - y) for a, b in zip(serial, ray) for x, y in zip(a["accuracy_per_task"], b["accuracy_per_task"])),
               default=0.0)
    return {"runs": len(serial), "runs_in_ray_report": len(ray), "equal_runs": equal, "max_abs_accuracy_diff": diff}


def markdown(r: dict[str, Any]) -> str:
    c, m = r["comparison"], r["machine"]
    return "\n".join([
        f"# {r['name']}: a grid serially and on a local Ray instance", "",
        f"Command: `{r['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v), "",
        f"Grid: {r['grid']}; {r['threads']} torch thread(s) per run; Ray: {r['ray_executor']}. "
        f"Load average when done: {r['load_average_1min_after']:.1f} (other jobs shared the machine).", "",
        "| mode | runs | wall time (s) | sum of run times (s) |", "|---|---|---|---|",
        *[f"| {mode} | {len(rep['runs'])} | {r['wall_s'][mode]:.1f} | {sum(x['wall_time_s'] for x in rep['runs']):.1f} |"
          for mode, rep in r["reports"].items()], "",
        f"Runs equal to the serial run's (all fields but {', '.join(r['volatile_fields'])}): "
        f"{c['equal_runs']} of {c['runs']}; largest accuracy difference {c['max_abs_accuracy_diff']}.", "",
        *[p for note in r["notes"] for p in (note, "")],
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="grid-ray")
    p.add_argument("--learners", default="simplecil,ranpac,fecam")
    p.add_argument("--backbones", default="edgecl-vit-tiny")
    p.add_argument("--datasets", default="shapes:60")
    p.add_argument("--protocols", default="B0-Inc10,B50%-Inc10")
    p.add_argument("--seeds", default="1993,1994,1995")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (= CPUs per Ray task)")
    p.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)

    from edgecl.grid import (VOLATILE_FIELDS, GridSpec, Protocol, machine_info, parse_backbones, split_list,
                             write_json)

    spec = GridSpec(split_list(args.learners), parse_backbones(args.backbones, None, {}), split_list(args.datasets),
                    [Protocol.parse(x) for x in split_list(args.protocols)], [int(s) for s in split_list(args.seeds)])
    with tempfile.TemporaryDirectory(prefix="edgecl-bench-grid-") as tmp:
        serial, serial_s = run_mode(spec, None, args.threads, Path(tmp) / "serial")
        ray, ray_s = run_mode(spec, ("local", args.threads, args.ray_num_cpus), args.threads, Path(tmp) / "ray")
    result = {
        "name": args.name, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.threads), "grid": spec.axes(), "threads": args.threads,
        "ray_executor": ray["executor"], "wall_s": {"serial": serial_s, "ray": ray_s},
        "comparison": compare(serial["runs"], ray["runs"]), "volatile_fields": list(VOLATILE_FIELDS),
        "load_average_1min_after": os.getloadavg()[0],
        "notes": args.note, "reports": {"serial": serial, "ray": ray},
    }
    out = Path(args.out)
    write_json(result, out / f"{args.name}.json")
    (out / f"{args.name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0 if result["comparison"]["equal_runs"] == result["comparison"]["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
