"""In-memory image data sets and the batch loader that feeds learners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from edgecl_runtime.preprocess import preprocess


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
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got [{self.labels.min()}, {self.labels.max()}]")
        if self.domains is not None and self.domains.shape != self.labels.shape:
            raise ValueError(f"{len(self.labels)} images but domains of shape {self.domains.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select_classes(self, classes: Sequence[int]) -> "ArrayDataset":
        """The samples whose label is in ``classes`` (labels unchanged)."""
        mask = np.isin(self.labels, np.asarray(list(classes), dtype=np.int64))
        domains = None if self.domains is None else self.domains[mask]
        return ArrayDataset(self.images[mask], self.labels[mask], self.class_names, domains)

    def relabel(self, order: Sequence[int]) -> "ArrayDataset":
        """Relabel so that class ``order[i]`` becomes label ``i``."""
        order = np.asarray(order, dtype=np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return ArrayDataset(self.images, inverse[self.labels], [self.class_names[i] for i in order], self.domains)


class BatchLoader:
    """Re-iterable batches of preprocessed ``(x, y)`` torch tensors."""

    def __init__(
        self,
        dataset: ArrayDataset,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset = dataset
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self.batch_size, self.shuffle = batch_size, shuffle
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = preprocess(self.dataset.images[idx], self.input_size, self.mean, self.std)
            yield torch.from_numpy(x), torch.from_numpy(self.dataset.labels[idx])
