"""Tables of the unknown-score measures of ``cil_table.py --open-set`` grids (issue 30).

    python benchmarks/unknown_table.py --name unknown-table --sources unknown-emoji500,unknown-glyphs200

Reads ``benchmarks/results/<source>.json`` (runs with an ``open_set`` record: after some tasks of the
class-incremental protocol, the test images of the classes seen so far are the known images and those of the
classes still to come the unknowns; ``edgecl.openset``) and writes ``<name>.md`` and ``<name>.json``:

* per (data set, learner): AUROC and FPR at 95 % TPR of every candidate score of the head (mean ± std over
  seeds, each the mean over the probe points), so the choice of the default score per head kind is visible;
* the default score with the threshold calibrated on training images as the export does: the fraction of known
  and of unknown test images accepted, top-1 on the known images, top-1 counting a rejection as an error, and
  top-1 of the accepted images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_KEYS = ("known_accepted", "unknown_accepted", "accuracy", "accuracy_at_threshold", "accepted_accuracy")


def groups(runs: list[dict]) -> dict[tuple[str, str, str, str], list[dict]]:
    out = defaultdict(list)
    for r in runs:
        if r.get("open_set"):
            c = r["config"]
            out[(c["dataset"], r["protocol"], r["backbone"], c["learner"])].append(r["open_set"])
    return out


def pm(values, scale: float = 100.0) -> str:
    v = np.asarray([x for x in values if x is not None and x == x], float) * scale
    if not len(v):
        return "-"
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def summarise(group: list[dict]) -> dict:
    names = list(group[0]["candidates"])
    return {
        "kind": group[0]["kind"], "seeds": len(group), "default_score": group[0]["default"]["score"],
        "candidates": {n: {m: [g["candidates"][n][m] for g in group] for m in ("auroc", "fpr95")} for n in names},
        "default": {k: [g["default"].get(k) for g in group] for k in DEFAULT_KEYS + ("auroc", "fpr95")},
    }


def markdown(table: dict, command: str, sources: list[str]) -> str:
    lines = ["# Unknown images: scores per head kind", "",
             "After tasks of the class-incremental protocol (up to 4 evenly spaced, the last excluded), the test "
             "images of the seen classes are *known*, those of the classes still to come *unknown* "
             "(`edgecl.openset`). Percent, mean ± std over class-order seeds. Higher AUROC and lower FPR@95 "
             "(unknown images accepted when 95 % of the known ones are) are better.", "",
             f"Command: `{command}`", "", "Sources: " + ", ".join(f"[{s}]({s}.md)" for s in sources), ""]
    for key, s in table.items():
        dataset, protocol, backbone, learner = key.split(" | ")
        lines += [f"## {learner} ({s['kind']} head) on {dataset}, {protocol}, {backbone} — {s['seeds']} seeds", "",
                  "| score | AUROC | FPR@95 |", "|---|---|---|"]
        for n, m in s["candidates"].items():
            mark = " (default)" if n == s["default_score"] else ""
            lines.append(f"| {n}{mark} | {pm(m['auroc'])} | {pm(m['fpr95'])} |")
        d = s["default"]
        lines += ["", f"Default score `{s['default_score']}` at the threshold calibrated on training images "
                  "(target: 95 % of known accepted):", "",
                  "| known accepted | unknown accepted | top-1 | top-1, rejections as errors | top-1 of accepted |",
                  "|---|---|---|---|---|",
                  "| " + " | ".join(pm(d[k]) for k in DEFAULT_KEYS) + " |", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="unknown-table")
    p.add_argument("--sources", required=True, help="comma-separated result names (cil_table.py --open-set)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    runs = [r for s in sources for r in json.loads((args.out / f"{s}.json").read_text())["runs"]]
    table = {" | ".join(k): summarise(g) for k, g in sorted(groups(runs).items())}
    command = shlex.join(["python", "benchmarks/unknown_table.py", *(argv if argv is not None else sys.argv[1:])])
    (args.out / f"{args.name}.json").write_text(json.dumps({"command": command, "sources": sources, "table": table},
                                                           indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(table, command, sources))
    print(f"wrote {args.out / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
