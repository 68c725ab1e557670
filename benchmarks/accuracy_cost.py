"""Accuracy beside device cost: each learner's last accuracy on every (dataset, protocol) of some result files,
next to its bundle size and latency relative to SimpleCIL on the same backbone.

Reads ``benchmarks/results/<name>.json`` of ``cil_table.py`` (``--results``, e.g. merged tables) and of
``bench_cost.py`` (``--cost``); a learner's cost is the case labelled with its name on its backbone. Writes
``<out>.json`` and ``<out>.md``: one row per (learner, backbone), one column per (dataset, protocol) with the
mean ± std of the last accuracy over the seeds (and their number), then the three cost ratios.

    python benchmarks/accuracy_cost.py --results cil-glyphs200-mix --cost cost-glyphs200-vit,cost-glyphs200-clip \\
        --out benchmarks/results/mix-accuracy-cost
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from cil_table import mean_std, run_groups  # the script's folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"


def load(names: str) -> list[dict]:
    return [json.loads((RESULTS / f"{n}.json").read_text(encoding="utf-8")) for n in names.split(",") if n]


def table(reports: list[dict], costs: list[dict]) -> dict:
    """``{"columns": [(dataset, protocol)], "rows": [{learner, backbone, cells: {column: text}, cost: {...}}]}``."""
    ratios = {(c["backbone"], label): r for c in costs for label, r in c["ratios"].items()}
    rows: dict[tuple[str, str], dict] = {}
    columns: list[str] = []
    for report in reports:
        for (dataset, proto, learner, backbone), runs in run_groups(report).items():
            col = f"{dataset} {proto}"
            columns += [col] if col not in columns else []
            row = rows.setdefault((learner, backbone), {"learner": learner, "backbone": backbone, "cells": {}})
            row["cells"][col] = f"{mean_std([r['last'] for r in runs])} ({len(runs)})"
    for (learner, backbone), row in rows.items():
        row["cost"] = ratios.get((backbone, learner.split(" ")[0]))
    return {"columns": columns, "rows": list(rows.values())}


def markdown(result: dict) -> str:
    cols = result["columns"]
    head = ["learner", "backbone", *cols, "bundle / SimpleCIL", "batch 1 / SimpleCIL", "batch 32 / SimpleCIL"]
    lines = [f"# {result['name']}", "",
             "Last top-1 (%) after the final task, mean ± std over class-order seeds (their number in brackets), "
             "beside the device cost relative to SimpleCIL on the same backbone (`bench_cost.py`: bundle size, "
             "`Bundle.predict` p50 at batch 1 and 32; blank: not measured).", "",
             f"Command: `{result['command']}`", "",
             "Sources: " + ", ".join(f"`{n}.md`" for n in result["sources"]), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        c = row["cost"] or {}
        cost = [f"x{c[k]:.2f}" if k in c else "" for k in ("size", "b1", "b32")]
        lines.append("| " + " | ".join([row["learner"], row["backbone"], *[row["cells"].get(k, "") for k in cols],
                                         *cost]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, metavar="NAME,NAME...", help="cil_table.py result files")
    ap.add_argument("--cost", default="", metavar="NAME,NAME...", help="bench_cost.py result files")
    ap.add_argument("--out", required=True, help="output path without suffix")
    a = ap.parse_args()
    result = {"name": Path(a.out).name, "command": shlex.join(["python", *sys.argv]),
              "sources": [n for n in (a.results + "," + a.cost).split(",") if n],
              **table(load(a.results), load(a.cost))}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(a.out).with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
