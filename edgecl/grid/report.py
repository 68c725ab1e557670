"""The report of a grid: header (command, machine, axes, notes), run records in grid order, merging, JSON.

A report is a JSON-ready dict ``{name, command, machine, executor, grid, notes, runs}``;
``assemble`` orders the runs of a (possibly partial or resumed) grid; ``merge_reports``
unites several reports; ``write_json`` replaces the file atomically, so a reader (or a
killed grid resumed with ``--resume``) sees a whole report.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .spec import GridRun, run_key


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, torch threads per run, platform and library versions of this machine."""
    import torch

    from .. import __version__
    from .._compat import import_timm

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "timm": import_timm().__version__}
    for mod in ("onnxruntime", "onnx"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    versions["edgecl"] = __version__
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(),
            "versions": versions}


def assemble(header: dict[str, Any], runs: Iterable[GridRun], results: dict[str, dict],
             previous: Iterable[dict] = ()) -> dict[str, Any]:
    """``header`` plus the finished runs of ``runs`` (``results``: key -> record) in grid order, then the
    ``previous`` runs that are not in this grid (a resumed file keeps every run it had)."""
    keys = [r.key for r in runs]
    in_grid = set(keys)
    extra = [r for r in previous if run_key(r) not in in_grid]
    return {**header, "runs": [results[k] for k in keys if k in results] + extra}


def merge_reports(name: str, command: str, reports: dict[str, dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """One report from several (``source name -> report``): grids united, each source's command kept,
    runs deduplicated by ``run_key`` (the first source wins), notes united (``notes`` first)."""
    grid: dict[str, list] = {}
    for r in reports.values():
        for k, values in r["grid"].items():
            grid.setdefault(k, [])
            grid[k] += [v for v in values if v not in grid[k]]
    runs: dict[str, dict] = {}
    for r in reports.values():
        for run in r["runs"]:
            runs.setdefault(run_key(run), run)
    merged_notes = list(notes)
    for r in reports.values():
        merged_notes += [n for n in r.get("notes", []) if n not in merged_notes]
    return {
        "name": name,
        "command": command,
        "sources": [{"name": s, "command": r["command"]} for s, r in reports.items()],
        "machine": next(iter(reports.values()))["machine"],
        "grid": grid,
        "notes": merged_notes,
        "runs": list(runs.values()),
    }


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(report: dict[str, Any], path: Path) -> None:
    """Replace ``path`` with ``report`` atomically (temporary file, fsync, rename)."""
    from edgecl_runtime.storage import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
