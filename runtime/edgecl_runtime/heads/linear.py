"""Linear head: ``scores = embeddings @ weight.T + bias`` (the trained classifier of L2P, DualPrompt, CODA-Prompt).

A linear classifier is learned by gradient descent jointly with the rest of
the model, so the device cannot add a class to it from a few examples: export
such learners with their prototype head (``head=prototype``) for that.
Removing a class is exact (its row goes).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError
from .base import Head, register_head, require_arrays

NO_DEVICE_LEARNING = (
    "this bundle has a trained linear head, which cannot learn classes on the device; "
    "to add classes on the device use the prototype head: train with `--learner-arg head=prototype` "
    "(head kind prototype_cosine) and export again"
)


@register_head
class LinearHead(Head):
    """``weight (C, D)``, ``bias (C,)`` and ``counts (C,)`` (training examples behind each class)."""

    kind = "linear"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, counts: np.ndarray):
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self._counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> LinearHead:
        weight, bias, counts = require_arrays(arrays, ("weight", "bias", "counts"), cls.kind)
        if weight.shape != (n_classes, dim) or bias.shape != (n_classes,) or counts.shape != (n_classes,):
            raise CorruptBundleError(
                f"head arrays {weight.shape}/{bias.shape}/{counts.shape} do not match "
                f"{n_classes} classes of dimension {dim}"
            )
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))) or np.any(counts < 0):
            raise CorruptBundleError("head arrays hold non-finite weights or negative counts")
        return cls(weight, bias, counts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias, "counts": self._counts}

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def graph_inputs(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings.astype(np.float32) @ self.weight.T + self.bias

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> LinearHead:
        raise InvalidInputError(NO_DEVICE_LEARNING)

    def without_examples(self, index: int, embeddings: np.ndarray) -> LinearHead:
        raise InvalidInputError(NO_DEVICE_LEARNING)

    def without_class(self, index: int) -> LinearHead:
        keep = np.arange(self.num_classes) != index
        return LinearHead(self.weight[keep], self.bias[keep], self._counts[keep])
