"""The one check of a task's training labels, used by every learner."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..errors import LabelError


def loader_labels(loader: Iterable) -> np.ndarray:
    """All labels of one pass over a loader of ``(x, y)`` batches, in order."""
    return np.concatenate([np.asarray(y).reshape(-1) for _, y in loader] or [np.zeros(0, np.int64)]).astype(np.int64)


def task_classes(labels, num_classes: int, new_only: bool = False) -> tuple[list[int], list[int]]:
    """``(old, new)`` classes present in ``labels`` for a learner that knows ``num_classes`` classes.

    ``LabelError`` when ``labels`` is empty, when the new classes do not follow the known ones
    without gaps (``num_classes, num_classes + 1, ...``: a class between them has no samples), and
    with ``new_only`` when the task revisits a known class.
    """
    values = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    present = sorted(int(c) for c in np.unique(values))
    if not present:
        raise LabelError("fit_task got no training samples")
    old = [c for c in present if c < num_classes]
    new = [c for c in present if c >= num_classes]
    if new_only and old:
        raise LabelError(f"task labels must be new classes >= {num_classes}, got {old[0]}")
    gaps = sorted(set(range(num_classes, new[-1] + 1)) - set(new)) if new else []
    if gaps:
        raise LabelError(
            f"classes {gaps} have no training samples (new classes must follow the {num_classes} known ones)"
        )
    return old, new
