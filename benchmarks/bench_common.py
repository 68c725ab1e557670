"""What the single-process micro-benchmarks share: best-of timing, the report header, JSON + Markdown output."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The best wall time of ``repeats`` calls of ``fn`` and the last call's value."""
    best, value = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def header(threads: int = 1) -> dict:
    """The command as typed, the machine and the load average at the start."""
    from edgecl.grid import machine_info

    return {"command": shlex.join(["python", *sys.argv]), "machine": machine_info(threads),
            "load": [round(x, 2) for x in os.getloadavg()]}


def write(stem: str, report: dict, markdown: str, out: Path | None = None) -> None:
    """``<out>.json`` and ``<out>.md`` (default ``results/<stem>``); the Markdown is printed too."""
    out = Path(out) if out is not None else RESULTS / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_name(out.name + ".md").write_text(markdown)
    print(markdown)


def preamble(report: dict) -> list[str]:
    """The Markdown lines naming the command, the machine and the load."""
    return [f"Command: `{report['command']}`  ",
            f"Machine: `{json.dumps(report['machine'])}`, load average at start {report['load']}", ""]
