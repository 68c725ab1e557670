"""Prototype head: class means of embeddings scored by cosine similarity (SimpleCIL, APER, EASE)."""

from __future__ import annotations

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError
from .base import Head, check_examples, l2_normalize, register_head, require_arrays


@register_head
class PrototypeCosineHead(Head):
    """Class prototypes (mean embeddings) scored by cosine similarity.

    ``prototypes`` holds raw (unnormalised) means and ``counts`` the number of
    examples behind each, so adding examples to a class is a running mean.
    """

    kind = "prototype_cosine"

    def __init__(self, prototypes: np.ndarray, counts: np.ndarray):
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self._counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "PrototypeCosineHead":
        protos, counts = require_arrays(arrays, ("prototypes", "counts"), cls.kind)
        if protos.shape != (n_classes, dim) or counts.shape != (n_classes,):
            raise CorruptBundleError(
                f"head arrays {protos.shape}/{counts.shape} do not match {n_classes} classes of dimension {dim}"
            )
        if not np.all(np.isfinite(protos)) or np.any(counts < 1):
            raise CorruptBundleError("head arrays hold non-finite prototypes or non-positive counts")
        return cls(protos, counts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes, "counts": self._counts}

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(embeddings.astype(np.float32)) @ l2_normalize(self.prototypes).T

    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "PrototypeCosineHead":
        protos, counts = self.prototypes.copy(), self._counts.copy()
        if index is None:
            protos = np.vstack([protos, (total / k)[None].astype(np.float32)])
            counts = np.append(counts, k)
        else:
            n = int(counts[index])
            left = n + sign * k
            if left < 1:
                raise InvalidInputError(f"cannot remove {k} examples from a class that has {n}")
            protos[index] = ((protos[index].astype(np.float64) * n + sign * total) / left).astype(np.float32)
            counts[index] = left
        return PrototypeCosineHead(protos, counts)

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "PrototypeCosineHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], +1)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "PrototypeCosineHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], -1)

    def without_class(self, index: int) -> "PrototypeCosineHead":
        keep = np.arange(self.num_classes) != index
        return PrototypeCosineHead(self.prototypes[keep], self._counts[keep])
