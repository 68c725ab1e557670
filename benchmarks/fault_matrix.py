"""Fault matrix: every mutating bundle operation x every write-side system call x (ENOSPC, short write then
a full disk, EACCES), counting what was lost or committed twice (both must be 0).

The engine is tests/faults.py (also run by tests/test_faults.py): each trial updates a fresh copy of a
prepared bundle with the fault armed at one call, then checks that a raised error left the bundle as it
was (and a retry commits the update exactly once) and that a returned call committed it exactly once.

    python benchmarks/fault_matrix.py [--out benchmarks/results]

writes ``fault_matrix.json`` and ``fault_matrix.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from edgecl_runtime.benchmark import machine  # noqa: E402
from tests.faults import MODES, run_matrix  # noqa: E402


def summarise(trials) -> dict:
    by_op: dict = collections.defaultdict(lambda: collections.Counter())
    for t in trials:
        c = by_op[t.op]
        c["trials"] += 1
        c[t.outcome] += 1
        c["problems"] += bool(t.problems)
        c["lost_or_doubled"] += any("reference" in p or "committed and raised" in p for p in t.problems)
        c["undocumented_exceptions"] += any("undocumented" in p for p in t.problems)
    return {op: dict(c) for op, c in by_op.items()}


def markdown(result: dict) -> str:
    lines = [
        "# Fault matrix",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} CPUs), Python {result['python']}; "
        f"{result['seconds']} s.",
        "",
        "Each trial fails one write-side system call (open for writing, write, fsync, rename, truncate) of one "
        "operation with ENOSPC (the disk stays full), a short write (then the disk is full) or EACCES. "
        "*raised*: a documented error, the bundle read back unchanged and a retry committed the update once; "
        "*returned*/*warned*: committed once (warned: a failure after the commit point, reported as a warning).",
        "",
        "| operation | trials | raised | returned | warned | lost or doubled | undocumented exceptions |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, c in result["operations"].items():
        lines.append(f"| {op} | {c.get('trials', 0)} | {c.get('raised', 0)} | {c.get('returned', 0)} | "
                     f"{c.get('warned', 0)} | {c.get('lost_or_doubled', 0)} | {c.get('undocumented_exceptions', 0)} |")
    t = result["totals"]
    lines += ["", f"Total: {t['trials']} trials ({t['fault_points']} fault points x {len(MODES)} modes), "
                  f"classes lost or updates doubled: {t['lost_or_doubled']}, other problems: {t['problems']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        trials = run_matrix(Path(tmp))
    ops = summarise(trials)
    result = {
        "command": "python benchmarks/fault_matrix.py",
        "machine": machine(),
        "python": platform.python_version(),
        "seconds": round(time.monotonic() - t0, 1),
        "modes": list(MODES),
        "operations": ops,
        "totals": {
            "trials": len(trials),
            "fault_points": len({(t.op, t.point) for t in trials}),
            "lost_or_doubled": sum(c.get("lost_or_doubled", 0) for c in ops.values()),
            "problems": sum(c.get("problems", 0) for c in ops.values()),
        },
        "failures": [{"op": t.op, "mode": t.mode, "call": t.call, "problems": t.problems} for t in trials if t.problems],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_matrix.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fault_matrix.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
