"""Base of learners that classify by cosine similarity to class prototypes of their embedding.

The embedding is whatever ``embedding_module()`` computes (a frozen backbone,
a PEFT-adapted one, several concatenated); the classifier is the class means
of training embeddings, which is exactly the runtime's ``prototype_cosine``
head, so these learners' bundles learn new classes on the device. Subclasses
declare hyper-parameters (``defaults``, ``choices``, ``positive``; validated by
``resolve_hparams``), the embedding and its dimension, and what they learn
beyond prototypes (``extra_state``/``load_extra_state``).

Prototypes are kept as float64 running means with counts: adding examples of
a class is ``m <- (n m + sum) / (n + k)``, the same update the device applies.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import class_sums
from .hparams import ConfiguredLearner


class PrototypeLearner(ConfiguredLearner):
    head_kind = "prototype_cosine"
    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.means = torch.zeros(0, 0, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.int64)

    # ------------------------------------------------------------ subclass
    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Dimension of ``embedding_module()``'s output (what the bundle's head sees)."""

    @abc.abstractmethod
    def embedding_module(self) -> torch.nn.Module: ...

    def extra_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``extra_state()``; called before the prototypes are checked against ``embedding_dim``."""

    # ------------------------------------------------------------ training
    def fit_task(self, loader, progress: Callable | None = None) -> None:
        feats, labels = self.embed(loader, progress)
        self.add_examples(feats, labels)

    def add_examples(self, feats: torch.Tensor, labels: torch.Tensor) -> list[int]:
        """Running-mean update of the classes in ``labels``; returns the classes that are new."""
        dim = feats.shape[1]
        sums, k = class_sums(feats, labels, self.num_classes)  # over all ranks under torch.distributed
        if self.means.shape[0] == 0:
            self.means = torch.zeros(0, dim, dtype=torch.float64)
        n = len(k)
        missing = [c for c in range(self.num_classes, n) if k[c] == 0]
        if missing:
            raise ValueError(f"classes {missing} have no training samples")
        new = list(range(self.num_classes, n))
        if new:
            self.means = torch.cat([self.means, torch.zeros(len(new), dim, dtype=torch.float64)])
            self.counts = torch.cat([self.counts, torch.zeros(len(new), dtype=torch.int64)])
        hit = k > 0
        total = self.counts[hit] + k[hit]
        self.means[hit] = (self.means[hit] * self.counts[hit, None] + sums[hit]) / total[:, None]
        self.counts[hit] = total
        self.num_classes = n
        return new

    # ----------------------------------------------------------- inference
    @property
    def prototypes(self) -> torch.Tensor:
        return self.means.float()

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats, dim=1) @ F.normalize(self.prototypes, dim=1).T

    # ------------------------------------------------------- state, export
    def state(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes.numpy().copy(), "counts": self.counts.numpy().copy(), **self.extra_state()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        protos = torch.as_tensor(np.asarray(state["prototypes"]), dtype=torch.float64)
        counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        self.load_extra_state(state)
        if protos.ndim != 2 or protos.shape[1] != self.embedding_dim or counts.shape != protos.shape[:1]:
            raise ValueError(
                f"{self.name} state shapes {tuple(protos.shape)}/{tuple(counts.shape)} do not fit "
                f"embedding dimension {self.embedding_dim}"
            )
        self.means, self.counts = protos, counts
        self.num_classes = protos.shape[0]

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        return self.head_kind, {"prototypes": self.prototypes.numpy().copy(), "counts": self.counts.numpy().copy()}
