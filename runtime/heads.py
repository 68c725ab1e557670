"""Classifier heads the runtime evaluates in numpy on top of backbone embeddings.

Heads are immutable: an update returns a new head, so a failed update leaves
the bundle's head as it was.
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptBundleError, InvalidInputError


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class PrototypeCosineHead:
    """Class prototypes (mean embeddings) scored by cosine similarity.

    ``prototypes`` holds raw (unnormalised) means and ``counts`` the number of
    examples behind each, so adding examples to a class is a running mean.
    """

    kind = "prototype_cosine"

    def __init__(self, prototypes: np.ndarray, counts: np.ndarray):
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "PrototypeCosineHead":
        try:
            protos, counts = arrays["prototypes"], arrays["counts"]
        except KeyError as exc:
            raise CorruptBundleError(f"head file lacks array {exc}") from exc
        if protos.shape != (n_classes, dim) or counts.shape != (n_classes,):
            raise CorruptBundleError(
                f"head arrays {protos.shape}/{counts.shape} do not match {n_classes} classes of dimension {dim}"
            )
        if not np.all(np.isfinite(protos)) or np.any(counts < 1):
            raise CorruptBundleError("head arrays hold non-finite prototypes or non-positive counts")
        return cls(protos, counts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes, "counts": self.counts}

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(embeddings.astype(np.float32)) @ l2_normalize(self.prototypes).T

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "PrototypeCosineHead":
        """New head with ``embeddings`` added to class ``index`` (``None``: a new last class)."""
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise InvalidInputError("no examples to add")
        if not np.all(np.isfinite(embeddings)):
            raise InvalidInputError("examples produced non-finite embeddings")
        k = embeddings.shape[0]
        total = embeddings.astype(np.float64).sum(axis=0)
        protos, counts = self.prototypes.copy(), self.counts.copy()
        if index is None:
            protos = np.vstack([protos, (total / k)[None].astype(np.float32)])
            counts = np.append(counts, k)
        else:
            n = counts[index]
            protos[index] = ((protos[index].astype(np.float64) * n + total) / (n + k)).astype(np.float32)
            counts[index] = n + k
        return PrototypeCosineHead(protos, counts)


HEADS = {PrototypeCosineHead.kind: PrototypeCosineHead}


def head_class(kind: str):
    try:
        return HEADS[kind]
    except KeyError:
        raise CorruptBundleError(
            f"unknown head kind {kind!r}; this runtime knows {', '.join(sorted(HEADS))}"
        ) from None
