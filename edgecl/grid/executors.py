"""Where the runs of a grid execute: one after another in this process, or as Ray tasks.

An executor's ``map(runs, threads)`` yields ``(run, record)`` as each run finishes
(``record`` from ``edgecl.grid.run.run_one``); the first failing run raises, after the
runs not yet started are cancelled. ``describe()`` is the ``executor`` field of a report.

``RayExecutor`` submits every run as a Ray task reserving ``cpus_per_run`` CPUs and
yields the records in completion order. ``address`` is ``"local"`` (start a private
Ray instance on this machine, ``num_cpus`` CPUs, no dashboard), ``"auto"`` (join the
cluster that ``ray start`` runs on this machine) or a cluster address
(``HOST:6379``, ``ray://HOST:10001``). Every node needs edgecl installed in the same
Python environment; each node's workers keep embeddings in that node's cache
(``$EDGECL_CACHE_DIR``), shared by its concurrent runs (``edgecl.features.store``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from .run import run_one
from .spec import GridRun

LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # records are a few kB: the local object store stays small


class SerialExecutor:
    """The runs one after another in this process."""

    def map(self, runs: Iterable[GridRun], threads: int) -> Iterator[tuple[GridRun, dict[str, Any]]]:
        for run in runs:
            yield run, run_one(run, threads)

    def describe(self) -> dict[str, Any]:
        return {"kind": "serial"}

    def close(self) -> None:
        pass


class RayExecutor:
    """The runs as Ray tasks of ``cpus_per_run`` CPUs each (see module doc)."""

    def __init__(self, address: str = "local", cpus_per_run: int = 1, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError('Ray is not installed: pip install "edgecl[grid]" (or pip install ray)') from exc
        if cpus_per_run < 1:
            raise ValueError(f"cpus_per_run must be at least 1, got {cpus_per_run}")
        self.ray, self.address, self.cpus_per_run = ray, address, cpus_per_run
        self._started = not ray.is_initialized()
        if not self._started:
            return
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     log_to_driver=False)
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as exc:
                raise RuntimeError(
                    f"cannot join the Ray cluster at {address!r} ({exc}): is it running (`ray status`)? A cluster with "
                    "token authentication needs RAY_AUTH_MODE=token and its token here (docs/grids.md)") from exc

    def map(self, runs: Iterable[GridRun], threads: int) -> Iterator[tuple[GridRun, dict[str, Any]]]:
        ray = self.ray
        task = ray.remote(run_one).options(num_cpus=self.cpus_per_run, max_retries=1)
        pending = {task.remote(run, threads): run for run in runs}
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                yield run, ray.get(ref)
        finally:
            for ref in pending:  # a failed run, an interrupt or a closed generator: stop the rest
                ray.cancel(ref, force=True)

    def describe(self) -> dict[str, Any]:
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"kind": "ray", "address": self.address, "cpus_per_run": self.cpus_per_run,
                "cluster_cpus": ray.cluster_resources().get("CPU"), "nodes": len(nodes)}

    def close(self) -> None:
        """Shut down the Ray instance this executor started (not one the caller had started)."""
        if self._started:
            self.ray.shutdown()


def make_executor(ray_address: str | None, cpus_per_run: int = 1, num_cpus: int | None = None):
    """``SerialExecutor`` without ``ray_address``, else ``RayExecutor``."""
    if ray_address is None:
        return SerialExecutor()
    return RayExecutor(ray_address, cpus_per_run, num_cpus)
