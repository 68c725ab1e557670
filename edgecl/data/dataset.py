"""In-memory image data sets and the batch loader that feeds learners."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from edgecl_runtime.preprocess import preprocess

from ..errors import ConfigError
from .errors import DataError


T = TypeVar("T")


def preprocess_rows(images: np.ndarray, idx: np.ndarray, input_size, mean, std) -> np.ndarray:
    """``preprocess(images[idx])`` on one BLAS thread, as the runtime does: the resize's small matrix
    products are many times slower with OpenBLAS threads competing with the model's."""
    from edgecl_runtime import blas

    with blas.limit(1):
        return preprocess(images[idx], input_size, mean, std)


def prefetched(fn: Callable[..., T], items: Iterable) -> Iterator[T]:
    """``fn(item)`` for each item, in order, computing the next one on a worker thread while the caller
    works on the current one (preprocessing is numpy, which releases the GIL)."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pending = pool.submit(fn, next(items))
        except StopIteration:
            return
        for item in items:
            current, pending = pending, pool.submit(fn, item)
            yield current.result()
        yield pending.result()


@dataclass
class ArrayDataset:
    """uint8 images ``(N, H, W, 3)``, int64 labels ``(N,)`` and the class names labels index;
    optionally the domain of each image ``(N,)`` (str: the font of a glyph, the vendor of an emoji)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    domains: np.ndarray | None = None

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"labels must lie in [0, {len(self.class_names)}), got [{self.labels.min()}, {self.labels.max()}]")
        if self.domains is not None and self.domains.shape != self.labels.shape:
            raise DataError(f"{len(self.labels)} images but domains of shape {self.domains.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_indices(self, classes: Sequence[int]) -> np.ndarray:
        """Rows whose label is in ``classes``, ascending."""
        return np.flatnonzero(np.isin(self.labels, np.asarray(list(classes), dtype=np.int64)))

    def select_classes(self, classes: Sequence[int]) -> "ArrayDataset":
        """The samples whose label is in ``classes`` (labels unchanged)."""
        idx = self.class_indices(classes)
        domains = None if self.domains is None else self.domains[idx]
        return ArrayDataset(self.images[idx], self.labels[idx], self.class_names, domains)

    def relabel(self, order: Sequence[int]) -> "ArrayDataset":
        """Relabel so that class ``order[i]`` becomes label ``i``."""
        order = np.asarray(order, dtype=np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return ArrayDataset(self.images, inverse[self.labels], [self.class_names[i] for i in order], self.domains)


class BatchLoader:
    """Re-iterable batches of preprocessed ``(x, y)`` torch tensors of ``dataset`` (of its rows ``indices``
    if given, e.g. one task's images of a whole split; every pass reshuffles them when ``shuffle``)."""

    def __init__(
        self,
        dataset: ArrayDataset,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self.batch_size, self.shuffle = batch_size, shuffle
        self._rng = np.random.default_rng(seed)
        self.last_order: np.ndarray | None = None  # the dataset rows of the last pass drawn

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def next_order(self) -> np.ndarray:
        """The dataset rows of the next pass, in its order (drawing the shuffle, as iterating does); kept as
        ``last_order``."""
        n = len(self.indices)
        self.last_order = self.indices[self._rng.permutation(n)] if self.shuffle else self.indices
        return self.last_order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.next_order()

        def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = order[i : i + self.batch_size]
            x = preprocess_rows(self.dataset.images, idx, self.input_size, self.mean, self.std)
            return torch.from_numpy(x), torch.from_numpy(self.dataset.labels[idx])

        yield from prefetched(batch, range(0, len(order), self.batch_size))
