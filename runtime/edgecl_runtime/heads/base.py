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
    protos[index], counts[index] = shifted_row(protos[index], int(counts[index]), total, k, sign)
    return protos, counts


def shifted_row(proto: np.ndarray, n: int, total: np.ndarray, k: int, sign: int) -> tuple[np.ndarray, int]:
    """A running mean ``proto`` of ``n`` examples with ``k`` examples summing to ``total`` added (``sign=+1``)
    or removed (``-1``): the float32 mean and the new count."""
    left = n + sign * k
    if left < 1:
        raise InvalidInputError(f"cannot remove {k} examples from a class that has {n}")
    return ((proto.astype(np.float64) * n + sign * total) / left).astype(np.float32), left


class Head(abc.ABC):
    kind: ClassVar[str]
    # True when one class's examples enter the other classes' scores (``ridge``: the shared Gram matrix):
    # its ``without_class(index, examples)`` then also takes the class's known examples out of them.
    SHARED_STATISTICS: ClassVar[bool] = False
    # The "unknown" score this kind reports by default (``edgecl_runtime.unknown``; chosen by measurement,
    # docs/unknown.md).
    UNKNOWN_SCORE: ClassVar[str] = "max_score"

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

    def mean_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x, means)``: the images ``(N, d)`` and the class means ``(C, d)`` (running means of their examples' ``x``)
        in the space the head keeps them, float64; ``None`` for a kind that keeps no class means."""
        return None

    def cosines(self, embeddings: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray | None:
        """``(N, C)`` float64 cosine of each image to each class mean (``mean_space``), or ``None`` for a kind that
        keeps none (``edgecl_runtime.unknown``). ``labels``: the images are examples the head learnt (class
        ``labels[i]``, -1 for none), and each is compared with its class's mean *without* it (leave-one-out)."""
        space = self.mean_space(embeddings)
        if space is None:
            return None
        x, means = space
        unit = self.__dict__.get("_unit_means")  # a head never changes: its unit means are computed once
        if unit is None:
            unit = self._unit_means = l2_normalize(means).T
        cos = l2_normalize(x) @ unit
        if labels is None:
            return cos
        rows = np.nonzero((labels >= 0) & (self.counts[np.maximum(labels, 0)] > 1))[0]
        n = self.counts[labels[rows]].astype(np.float64)[:, None]
        without = (means[labels[rows]] * n - x[rows]) / (n - 1)
        cos[rows, labels[rows]] = np.sum(l2_normalize(x[rows]) * l2_normalize(without), axis=1)
        return cos

    def held_out_scores(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """``scores`` of images the head learnt (class ``labels[i]``), each scored by its class *without* it
        (leave-one-out), as a new image would be; ``None`` for a kind that cannot (``edgecl_runtime.unknown``)."""
        return None

    def class_statistics(self, index: int) -> dict[str, np.ndarray]:
        """The statistics the head keeps of class ``index`` alone (what ``store.diff`` compares; besides
        ``counts``); empty for a kind whose classes share all of theirs."""
        return {}

    def accumulator(self) -> "Accumulator":
        """An ``Accumulator`` applying many ``with_examples`` at once (merging the updates of many devices)."""
        return Accumulator(self)


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

    def class_statistics(self, index: int) -> dict[str, np.ndarray]:
        return {"prototype": self.prototypes[index]}

    @abc.abstractmethod
    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "RunningMeanHead":
        """The head with ``k`` examples summing to ``total`` added (``sign=+1``; ``index=None``: a new
        last class) or removed (``-1``)."""

    def with_sum(self, index: int | None, total: np.ndarray, k: int) -> "RunningMeanHead":
        """``with_examples`` from the examples' sum ``total`` (float64 ``(D,)``) and count ``k >= 1`` (statistics
        summed elsewhere, e.g. over the ranks of a distributed training run)."""
        total = np.asarray(total, dtype=np.float64)
        if k < 1 or total.shape != (self.prototypes.shape[1],) or not np.all(np.isfinite(total)):
            raise InvalidInputError(f"need k >= 1 examples summing to a finite ({self.prototypes.shape[1]},) vector")
        return self._shifted(index, total, int(k), +1)

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "RunningMeanHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], +1)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "RunningMeanHead":
        emb = check_examples(embeddings, self.prototypes.shape[1])
        return self._shifted(index, emb.astype(np.float64).sum(axis=0), emb.shape[0], -1)


class Accumulator:
    """Many additions to a head, applied in one step (``Head.accumulator()``).

    ``add(index, embeddings)`` takes examples of class ``index`` (``None``: a new
    last class) and returns the class's index; ``result()`` is the head after all
    of them, equal to calling ``with_examples`` for each in turn (bit for bit for
    per-class statistics; statistics all classes share, such as a ridge head's
    ``G``, up to float rounding). This default does exactly that. Head kinds whose ``with_examples``
    copies O(C) arrays override it with a ``ClassAccumulator``, so that merging the
    updates of many devices costs time linear in the examples and the classes.
    """

    def __init__(self, head: "Head"):
        self._head = head
        self.num_classes = head.num_classes

    def add(self, index: int | None, embeddings: np.ndarray) -> int:
        self._head = self._head.with_examples(index, embeddings)
        if index is None:
            self.num_classes += 1
            return self.num_classes - 1
        return int(index)

    def result(self) -> "Head":
        return self._head


class ClassAccumulator(Accumulator, abc.ABC):
    """An ``Accumulator`` that keeps the statistics of each class it touches and updates them with the head's
    own per-class rule, in the order given; ``result`` builds the head once (O(C) copies in all, not per update).

    So a class's statistics come out bit for bit as ``with_examples`` in turn
    gives them. Subclasses define ``start(index)`` (the head's statistics of an
    existing class), ``first(embeddings)`` (of a new class), ``step(state,
    embeddings)`` (more examples) and ``merged()`` (the head with ``per_class``).
    """

    def __init__(self, head: "Head"):
        super().__init__(head)
        self.per_class: dict[int, tuple] = {}  # class index -> its statistics after the additions so far

    def add(self, index: int | None, embeddings: np.ndarray) -> int:
        emb = check_examples(embeddings, self._head.dim)
        if index is None:
            index, self.num_classes = self.num_classes, self.num_classes + 1
            self.per_class[index] = self.first(emb)
            return index
        if not 0 <= int(index) < self.num_classes:
            raise InvalidInputError(f"class index {index} out of range for {self.num_classes} classes")
        index = int(index)
        state = self.per_class[index] if index in self.per_class else self.start(index)
        self.per_class[index] = self.step(state, emb)
        return index

    @abc.abstractmethod
    def start(self, index: int) -> tuple: ...

    @abc.abstractmethod
    def first(self, embeddings: np.ndarray) -> tuple: ...

    @abc.abstractmethod
    def step(self, state: tuple, embeddings: np.ndarray) -> tuple: ...

    @abc.abstractmethod
    def merged(self) -> "Head": ...

    def result(self) -> "Head":
        return self.merged() if self.per_class else self._head
