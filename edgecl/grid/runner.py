"""Run a grid: skip the runs a previous report has, execute the others, report after each one."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from .report import assemble
from .spec import GridSpec, run_key


def run_grid(spec: GridSpec, executor, header: dict[str, Any], *, threads: int = 1, previous: list[dict] = (),
             save: Callable[[dict[str, Any]], None] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The report of ``spec``'s grid: ``header`` plus every run's record in grid order.

    Runs whose key is in ``previous`` (a resumed report) are kept, not run again; the others go
    to ``executor`` (``edgecl.grid.executors``) with ``threads`` torch threads each. ``save``
    receives the report after every finished run, so an interrupted grid keeps what it finished.
    """
    runs = spec.runs()
    wanted = {r.key for r in runs}
    done = {k: rec for rec in previous if (k := run_key(rec)) in wanted}
    results = dict(done)
    todo = [r for r in runs if r.key not in done]
    for i, r in enumerate(runs, 1):
        if r.key in done:
            log(f"[{i}/{len(runs)}] {r.describe()}: done before")
    with contextlib.closing(executor.map(todo, threads)) as finished:
        for n, (run, record) in enumerate(finished, len(done) + 1):
            results[run.key] = record
            log(f"[{n}/{len(runs)}] {run.describe()}: {_summary(record)}")
            if save:
                save(assemble(header, runs, results, previous))
    return assemble(header, runs, results, previous)


def _summary(r: dict[str, Any]) -> str:
    store = r.get("embedding_store")
    cache = "no cache" if store is None else f"cache hits {store['hits']}, misses {store['misses']}"
    return (f"avg-inc {r['average_incremental']:.2f} last {r['last']:.2f} forgetting {r['forgetting']:.2f} "
            f"({r['wall_time_s']:.1f} s on {r.get('host', '?')}; embeddings {', '.join(r['embedding_engines'])}, {cache})")
