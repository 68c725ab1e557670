"""Prototype head: class means of embeddings scored by cosine similarity (SimpleCIL, APER, EASE)."""

from __future__ import annotations

import threading

import numpy as np

from ..errors import CorruptBundleError
from .base import (
    ClassAccumulator, RunningMeanHead, l2_normalize, read_only, register_head, require_arrays, shifted_mean, shifted_row,
)


_APPEND = threading.Lock()  # the check-and-append on a shared row buffer


@register_head
class PrototypeCosineHead(RunningMeanHead):
    """Class prototypes (mean embeddings) scored by cosine similarity.

    ``prototypes`` holds raw (unnormalised) means and ``counts`` the number of
    examples behind each, so adding examples to a class is a running mean.

    Adding a class does not copy the ``(C, D)`` prototypes: heads share a row
    buffer with spare capacity, and a head whose rows end where the buffer's
    filled part ends appends in place (rows a head can see are never written),
    so a new class costs O(D) amortised, also at 10,000 classes. The buffer
    also keeps the L2-normalised rows, so scoring does not re-normalise all
    ``C`` prototypes on every call.
    """

    kind = "prototype_cosine"
    UNKNOWN_SCORE = "nearest_cosine"  # docs/unknown.md

    def __init__(self, prototypes: np.ndarray, counts: np.ndarray, _shared: tuple | None = None):
        if _shared is None:
            protos = np.asarray(prototypes, dtype=np.float32)
            cnt = np.asarray(counts, dtype=np.int64)
            _shared = ([protos, cnt, len(cnt), l2_normalize(protos)], len(cnt))
        # [prototype rows, count rows, rows filled, normalised prototype rows], rows of this head
        self._buffer, self._n = _shared

    @property
    def prototypes(self) -> np.ndarray:
        """``(C, D)`` float32 prototypes (a read-only view)."""
        return read_only(self._buffer[0][: self._n])

    def _appended(self, proto: np.ndarray, count: int) -> "PrototypeCosineHead":
        with _APPEND:
            buf = self._buffer
            if buf[2] != self._n:  # another head appended after our rows: start a buffer of our own
                buf = [self._buffer[0][: self._n], self._buffer[1][: self._n], self._n, self._buffer[3][: self._n]]
            if buf[2] == len(buf[1]):  # full: grow by half (amortised O(D) per class)
                cap = max(8, buf[2] + buf[2] // 2)
                protos, cnt = np.empty((cap, buf[0].shape[1]), np.float32), np.empty(cap, np.int64)
                normed = np.empty_like(protos)
                protos[: buf[2]], cnt[: buf[2]], normed[: buf[2]] = buf[0][: buf[2]], buf[1][: buf[2]], buf[3][: buf[2]]
                buf = [protos, cnt, buf[2], normed]
            buf[0][buf[2]], buf[1][buf[2]] = proto, count
            buf[3][buf[2]] = l2_normalize(proto[None].astype(np.float32))[0]
            buf[2] += 1
            return PrototypeCosineHead(None, None, (buf, buf[2]))

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
        return {"prototypes": self.prototypes, "counts": self.counts}

    @property
    def num_classes(self) -> int:
        return self._n

    @property
    def counts(self) -> np.ndarray:
        return read_only(self._buffer[1][: self._n])

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(embeddings.astype(np.float32)) @ self._buffer[3][: self._n].T

    def mean_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return embeddings.astype(np.float64), self.prototypes.astype(np.float64)

    def held_out_scores(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.cosines(embeddings, labels)  # the scores are the cosines to the prototypes

    def graph_inputs(self) -> dict[str, np.ndarray]:
        return {"prototypes": read_only(self._buffer[3][: self._n])}  # (C, D) unit rows

    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "PrototypeCosineHead":
        if index is None:
            return self._appended((total / k).astype(np.float32), k)
        return PrototypeCosineHead(*shifted_mean(self.prototypes, self.counts, index, total, k, sign))

    def without_class(self, index: int) -> "PrototypeCosineHead":
        keep = np.arange(self.num_classes) != index
        return PrototypeCosineHead(self.prototypes[keep], self.counts[keep])

    def accumulator(self) -> "MeanAccumulator":
        return MeanAccumulator(self)


class MeanAccumulator(ClassAccumulator):
    """Per class: its float32 running mean and count, updated as ``with_examples`` does (``shifted_row``)."""

    def start(self, index: int) -> tuple:
        return self._head.prototypes[index], int(self._head.counts[index])

    def first(self, embeddings: np.ndarray) -> tuple:
        return (embeddings.astype(np.float64).sum(axis=0) / embeddings.shape[0]).astype(np.float32), embeddings.shape[0]

    def step(self, state: tuple, embeddings: np.ndarray) -> tuple:
        return shifted_row(state[0], state[1], embeddings.astype(np.float64).sum(axis=0), embeddings.shape[0], +1)

    def merged(self) -> PrototypeCosineHead:
        head, c0 = self._head, self._head.num_classes
        protos = np.empty((self.num_classes, head.dim), np.float32)
        counts = np.empty(self.num_classes, np.int64)
        protos[:c0], counts[:c0] = head.prototypes, head.counts
        for index, (proto, n) in self.per_class.items():
            protos[index], counts[index] = proto, n
        return PrototypeCosineHead(protos, counts)
