"""Class-incremental splits: B-m Inc-n with a seeded class order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.dataset import ArrayDataset
from ..errors import ConfigError


@dataclass(frozen=True)
class ClassIncremental:
    """``init_cls`` base classes, then tasks of ``increment`` new classes.

    ``init_cls=0`` means the first task has ``increment`` classes too (B0 Inc-n).
    The class order is a permutation of the data set's classes drawn from
    ``seed`` (``shuffle=False`` keeps the data set's order). After ``remap``,
    label ``i`` is the ``i``-th class in that order, so task ``t`` holds the
    contiguous labels ``tasks[t]``. A last task with fewer than ``increment``
    classes takes the remainder.
    """

    num_classes: int
    init_cls: int
    increment: int
    seed: int = 1993
    shuffle: bool = True

    def __post_init__(self):
        if self.num_classes < 1:
            raise ConfigError("num_classes must be >= 1")
        if self.increment < 1:
            raise ConfigError(f"increment must be >= 1, got {self.increment}")
        if not 0 <= self.init_cls <= self.num_classes:
            raise ConfigError(f"init_cls must be in [0, {self.num_classes}], got {self.init_cls}")

    @property
    def class_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_classes))
        return [int(c) for c in np.random.default_rng(self.seed).permutation(self.num_classes)]

    @property
    def tasks(self) -> list[list[int]]:
        first = self.init_cls or self.increment
        bounds = [0, min(first, self.num_classes)]
        while bounds[-1] < self.num_classes:
            bounds.append(min(bounds[-1] + self.increment, self.num_classes))
        return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def describe(self) -> str:
        return f"B{self.init_cls}-Inc{self.increment}: {self.num_tasks} tasks over {self.num_classes} classes"

    def remap(self, ds: ArrayDataset) -> ArrayDataset:
        if ds.num_classes != self.num_classes:
            raise ConfigError(f"scenario has {self.num_classes} classes, data set {ds.num_classes}")
        return ds.relabel(self.class_order)

    def task_indices(self, ds: ArrayDataset, t: int) -> np.ndarray:
        """Rows of ``ds`` (remapped) holding task ``t``'s classes, ascending."""
        return ds.class_indices(self.tasks[t])

    def seen_indices(self, ds: ArrayDataset, t: int) -> np.ndarray:
        """Rows of ``ds`` holding every class seen up to and including task ``t``, ascending."""
        return ds.class_indices(range(self.tasks[t][-1] + 1))

    def task_data(self, ds: ArrayDataset, t: int) -> ArrayDataset:
        """Samples of task ``t``'s classes (``ds`` already remapped)."""
        return ds.select_classes(self.tasks[t])

    def seen_data(self, ds: ArrayDataset, t: int) -> ArrayDataset:
        """Samples of every class seen up to and including task ``t``."""
        return ds.select_classes(range(self.tasks[t][-1] + 1))
