"""Base of learners that classify by cosine similarity to class prototypes of their embedding.

The embedding is whatever ``embedding_module()`` computes (a frozen backbone,
a PEFT-adapted one, several concatenated); the classifier is the runtime's
``prototype_cosine`` head itself (``edgecl_runtime.heads.prototype``: class means
of training embeddings with their counts), so these learners' bundles score
exactly like the learner and learn new classes on the device with the same
running-mean update. Subclasses declare hyper-parameters (``defaults``,
``choices``, ``positive``, ``validate``), the embedding and its dimension, and
what they learn beyond prototypes (``extra_state``/``load_extra_state``).
"""

from __future__ import annotations

import abc
from typing import Callable

import numpy as np
import torch

from edgecl_runtime.heads.prototype import PrototypeCosineHead

from .. import distributed
from .head_learner import HeadLearner
from .labels import task_classes


class PrototypeLearner(HeadLearner):
    head_class = PrototypeCosineHead

    # ------------------------------------------------------------ subclass
    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Dimension of ``embedding_module()``'s output (what the bundle's head sees)."""

    @abc.abstractmethod
    def embedding_module(self) -> torch.nn.Module: ...

    @property
    def head_dim(self) -> int:
        return self.embedding_dim

    def extra_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``extra_state()``; called before the prototypes are checked against ``embedding_dim``."""

    # ------------------------------------------------------------ training
    def fit_task(self, loader, progress: Callable | None = None) -> None:
        feats, labels = self.embed(loader, progress)
        self.add_examples(feats, labels)

    def add_examples(self, feats: torch.Tensor, labels: torch.Tensor) -> list[int]:
        """Running-mean update of the classes in ``labels`` (the runtime head's own; under torch.distributed with
        the class sums of every rank); returns the new classes."""
        old, new = task_classes(distributed.all_classes(labels.numpy()), self.num_classes)
        head = self.head or PrototypeCosineHead(np.zeros((0, feats.shape[1]), np.float32), np.zeros(0, np.int64))
        if distributed.is_distributed():
            sums, k = distributed.class_sums(feats, labels, self.num_classes)  # summed over ranks
            for c in old + new:
                head = head.with_sum(c if c < self.num_classes else None, sums[c].numpy(), int(k[c]))
        else:
            feats, labels = feats.numpy(), labels.numpy()
            for c in old + new:
                head = head.with_examples(c if c < self.num_classes else None, feats[labels == c])
        self.head, self.num_classes = head, head.num_classes
        return new

    def set_prototypes(self, prototypes: np.ndarray) -> None:
        """Replace the prototypes (same classes and counts): for learners whose embedding space changes."""
        self.head = PrototypeCosineHead(prototypes, self.head.counts.copy())

    # ----------------------------------------------------------- inference
    @property
    def prototypes(self) -> torch.Tensor:
        """``(C, D)`` float32 class means."""
        if self.head is None:
            return torch.zeros(0, self.embedding_dim)
        return torch.from_numpy(self.head.prototypes.copy())

    # ------------------------------------------------------- state, export
    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), **self.extra_state()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.load_extra_state(state)
        self._load_head(state)
