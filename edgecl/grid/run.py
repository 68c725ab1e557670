"""One run of a grid, as a JSON-ready record (the same function serially and in a Ray task)."""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from .spec import GridRun

# Fields of a run record that depend on where and when it ran, not on what it computed: its wall time,
# the machine, and how many embedding matrices it found in the shared cache (which run of a grid
# computes them first depends on the order the runs happen to start in).
VOLATILE_FIELDS = ("wall_time_s", "host", "embedding_store")


def run_one(run: GridRun, threads: int) -> dict[str, Any]:
    """Run ``run`` with ``threads`` torch threads; its record: config, accuracies, metrics, wall time, embeddings."""
    import torch

    from ..experiment import run_experiment

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = run_experiment(run.config, log=lambda s: None, open_set=run.open_set)
    wall = time.perf_counter() - t0
    features, m = result.learner.features, result.metrics
    spec = result.learner.backbone.spec
    return {
        **run.stub,
        "num_classes": run.num_classes,
        "classes_seen": np.cumsum([len(t) for t in result.scenario.tasks]).tolist(),
        "accuracy_per_task": m.overall,
        "accuracy_matrix": m.matrix,
        "average_incremental": m.average_incremental,
        "last": m.last,
        "forgetting": m.forgetting,
        "wall_time_s": round(wall, 2),
        "host": platform.node(),
        "embedding_cache": run.config.embedding_cache,
        "embedding_engines": sorted(set(features.engines_used.values())),
        "embedding_store": features.store_counts(),
        "backbone_spec": {"name": spec.name, "timm_name": spec.timm_name,
                          "input_size": list(spec.input_size), "weights_sha256": spec.weights_sha256},
        **({"open_set": result.open_set} if run.open_set else {}),
    }


def outcome(record: dict[str, Any]) -> dict[str, Any]:
    """A run record without its ``VOLATILE_FIELDS``: what two executions of one config must agree on."""
    return {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}
