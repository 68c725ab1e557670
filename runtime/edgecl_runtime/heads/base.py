"""The interface every runtime head implements.

A head turns backbone embeddings ``(N, D)`` into class scores ``(N, C)`` and
holds the statistics that let the device learn: heads are immutable, every
update returns a new head, so a failed update leaves the bundle's head as it
was. Statistics are kept so that updates are exact (the result equals a
from-scratch computation on all examples seen so far), which is also what
makes ``merge`` and ``remove_class`` exact for additive statistics.

To add a head kind: subclass ``Head`` in its own module under ``runtime/heads``
and register it with ``@register_head``. The exporter writes ``arrays()`` to the
bundle's head file; the runtime reads it back with ``from_arrays``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError

HEADS: dict[str, type["Head"]] = {}


def register_head(cls):
    if cls.kind in HEADS:
        raise ValueError(f"head kind {cls.kind!r} registered twice")
    HEADS[cls.kind] = cls
    return cls


def head_class(kind: str) -> type["Head"]:
    try:
        return HEADS[kind]
    except KeyError:
        raise CorruptBundleError(f"unknown head kind {kind!r}; this runtime knows {', '.join(sorted(HEADS))}") from None


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def require_arrays(arrays: dict[str, np.ndarray], names: tuple[str, ...], kind: str) -> list[np.ndarray]:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CorruptBundleError(f"{kind} head file lacks array(s) {', '.join(missing)}")
    return [arrays[n] for n in names]


def check_examples(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """Validated ``(k, dim)`` float embeddings of examples to add or remove."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InvalidInputError("no examples to add")
    if embeddings.shape[1] != dim:
        raise InvalidInputError(f"examples have dimension {embeddings.shape[1]}, the head expects {dim}")
    if not np.all(np.isfinite(embeddings)):
        raise InvalidInputError("examples produced non-finite embeddings")
    return embeddings


def shifted_mean(protos: np.ndarray, counts: np.ndarray, index: int, total: np.ndarray, k: int, sign: int):
    """Copies of ``protos``/``counts`` with ``k`` examples summing to ``total`` added (``sign=+1``)
    to or removed (``-1``) from the running mean of class ``index``."""
    protos, counts = protos.copy(), counts.copy()
    n = int(counts[index])
    left = n + sign * k
    if left < 1:
        raise InvalidInputError(f"cannot remove {k} examples from a class that has {n}")
    protos[index] = ((protos[index].astype(np.float64) * n + sign * total) / left).astype(np.float32)
    counts[index] = left
    return protos, counts


class Head(abc.ABC):
    kind: ClassVar[str]
    # True when one class's examples enter the other classes' scores (``ridge``: the shared Gram matrix):
    # its ``without_class(index, examples)`` then also takes the class's known examples out of them.
    SHARED_STATISTICS: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "Head":
        """Validate and wrap the arrays of a head file (``CorruptBundleError`` if they do not fit)."""

    @abc.abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the head holds, to be written to the head file."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int: ...

    @property
    @abc.abstractmethod
    def counts(self) -> np.ndarray:
        """``(C,)`` number of examples behind each class."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """``D``: the width of the embeddings (features) the head takes."""

    @abc.abstractmethod
    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """``(N, D)`` embeddings -> ``(N, C)`` scores (higher is better)."""

    @abc.abstractmethod
    def graph_inputs(self) -> dict[str, np.ndarray]:
        """The float32 arrays a single-file model (``model.onnx``) takes to compute ``scores``, by input name.

        Derived from the head's state (normalised prototypes, ridge weights, ...);
        ``edgecl_export.model_graph`` builds the matching scoring graph.
        """

    @abc.abstractmethod
    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "Head":
        """New head with ``embeddings`` added to class ``index`` (``None``: a new last class)."""

    @abc.abstractmethod
    def without_examples(self, index: int, embeddings: np.ndarray) -> "Head":
        """Exact inverse of ``with_examples(index, embeddings)`` for an existing class."""

    @abc.abstractmethod
    def without_class(self, index: int) -> "Head":
        """New head without class ``index`` (later classes shift down by one)."""


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (what heads hand out: their arrays are shared between heads)."""
    view = a.view()
    view.flags.writeable = False
    return view


class RunningMeanHead(Head):
    """A head whose classes are running means of their examples (``prototypes`` with ``counts``):
    adding or removing examples is one ``_shifted`` by their sum (see ``shifted_mean``)."""

    @property
    @abc.abstractmethod
    def prototypes(self) -> np.ndarray: ...

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    @abc.abstractmethod
    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "RunningMeanHead":
        """The head with ``k`` examples summing to ``total`` added (``sign=+1``; ``index=None``: a new
        last class) or removed (``-1``)."""

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "RunningMeanHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], +1)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "RunningMeanHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], -1)
