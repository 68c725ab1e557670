"""Subspace-weighted cosine head: EASE's classifier over an ensemble of per-task subspaces.

The embedding is ``S`` blocks of ``d`` features (one per adapter, optionally
the pre-trained backbone's first). A class scores the sum over blocks of the
cosine between the image's block and the class prototype's block, each block
weighted per class:

    score[n, c] = sum_j weights[c, j] * cos(x[n, j], prototypes[c, j])

In EASE a class weighs the subspace of its own task 1 and the others less
(``alpha / (T - 1)``), because its prototypes there are only complements
estimated from other classes. ``new_class_weights`` is the row a class added
on the device gets: its examples pass through every adapter, so it has real
prototypes in every block, like the classes of the newest task, and takes
their row.

``prototypes`` are raw means with ``counts``, so adding and removing examples
is an exact running mean (as in ``prototype_cosine``); merges replay the same
updates.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptBundleError
from .base import RunningMeanHead, l2_normalize, read_only, register_head, shifted_mean
from .validate import float_array, int_array


def block_normalize(x: np.ndarray, blocks: int) -> np.ndarray:
    """``(N, S*d)`` -> each of the ``S`` blocks of every row scaled to unit L2 norm."""
    n, dim = x.shape
    return l2_normalize(x.reshape(n, blocks, dim // blocks)).reshape(n, dim)  # (no -1: n may be 0)


@register_head
class SubspaceCosineHead(RunningMeanHead):
    """``prototypes (C, S*d)``, ``counts (C,)``, ``weights (C, S)`` and ``new_class_weights (S,)``."""

    kind = "subspace_cosine"
    UNKNOWN_SCORE = "nearest_cosine"  # docs/unknown.md

    def __init__(self, prototypes: np.ndarray, counts: np.ndarray, weights: np.ndarray, new_class_weights: np.ndarray):
        self._protos = np.asarray(prototypes, dtype=np.float32)
        self._counts = np.asarray(counts, dtype=np.int64)
        self._weights = np.asarray(weights, dtype=np.float32)
        self._new = np.asarray(new_class_weights, dtype=np.float32)
        self.blocks = len(self._new)
        c = len(self._counts)
        # scores = block_normalize(x) @ effective.T, with each prototype block normalised and weighted
        dim = self._protos.shape[1]
        unit = block_normalize(self._protos, self.blocks).reshape(c, self.blocks, dim // self.blocks)
        self._effective = (unit * self._weights[:, :, None]).reshape(c, dim)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "SubspaceCosineHead":
        new = float_array(arrays, "new_class_weights", cls.kind, (None,), np.float32)
        if len(new) == 0 or dim % len(new):
            raise CorruptBundleError(f"{cls.kind}: {len(new)} subspaces do not divide embedding dimension {dim}")
        protos = float_array(arrays, "prototypes", cls.kind, (n_classes, dim), np.float32)
        counts = int_array(arrays, "counts", cls.kind, (n_classes,), minimum=1)
        weights = float_array(arrays, "weights", cls.kind, (n_classes, len(new)), np.float32)
        return cls(protos, counts, weights, new)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes, "counts": self.counts, "weights": self.weights,
                "new_class_weights": read_only(self._new)}

    @property
    def num_classes(self) -> int:
        return len(self._counts)

    @property
    def counts(self) -> np.ndarray:
        return read_only(self._counts)

    @property
    def prototypes(self) -> np.ndarray:
        """``(C, S*d)`` float32 raw prototypes (a read-only view)."""
        return read_only(self._protos)

    @property
    def weights(self) -> np.ndarray:
        """``(C, S)`` weight of every class's cosine in every subspace (a read-only view)."""
        return read_only(self._weights)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return block_normalize(embeddings.astype(np.float32), self.blocks) @ self._effective.T

    def cosines(self, embeddings: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The scores: weighted cosines per subspace block (no leave-one-out: ``labels`` are ignored)."""
        return self.scores(embeddings).astype(np.float64)

    def graph_inputs(self) -> dict[str, np.ndarray]:
        return {"weighted_prototypes": read_only(self._effective)}  # (C, S*d): unit blocks times block weights

    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "SubspaceCosineHead":
        if index is None:
            return SubspaceCosineHead(
                np.vstack([self._protos, (total / k).astype(np.float32)[None]]),
                np.append(self._counts, k),
                np.vstack([self._weights, self._new[None]]),
                self._new,
            )
        protos, counts = shifted_mean(self._protos, self._counts, index, total, k, sign)
        return SubspaceCosineHead(protos, counts, self._weights, self._new)

    def without_class(self, index: int) -> "SubspaceCosineHead":
        keep = np.arange(self.num_classes) != index
        return SubspaceCosineHead(self._protos[keep], self._counts[keep], self._weights[keep], self._new)
