"""The ``Learner`` interface every continual-learning method implements.

A learner owns a frozen pre-trained backbone plus compact state (prototypes,
heads, prompts, adapters). The protocol calls ``fit_task`` once per task with
a loader of ``(x, y)`` batches whose labels are global class indices (task
``t`` brings new, contiguous labels), then ``predict``/``logits`` over all
classes seen so far. ``state``/``load_state`` round-trip the learned state as
numpy arrays; ``embedding_module`` and ``export_head`` tell the exporter what
goes into ``backbone.onnx`` and the runtime head.

Scoring is split in two: ``embedding_module()`` maps images to embeddings and
``scores`` maps embeddings to class scores (``logits`` is both). ``head_class`` is
the runtime head (``edgecl_runtime.heads``) the learner exports; ``head_kind`` is its kind. Embeddings
of a ``BatchLoader``'s images go through ``self.features``, the experiment's
``edgecl.features.FeatureExtractor`` (by default one without a cache, eager
torch), which reuses them while ``embedding_frozen`` says the embedding
module no longer changes in this run.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from edgecl_runtime.heads.base import Head

from ..backbones import Backbone
from ..data import BatchLoader
from ..distributed import local_rows
from ..features import FeatureExtractor


class Learner(abc.ABC):
    name: ClassVar[str]
    head_class: ClassVar[type[Head]]  # the runtime head the learner exports (per instance where an hparam picks it)

    @property
    def head_kind(self) -> str:
        """The kind of the exported runtime head (``edgecl_runtime.heads.HEADS``), from the head class itself."""
        return self.head_class.kind

    def __init__(self, backbone: Backbone, device: str = "cpu", **hparams: Any):
        self.backbone = backbone.to(device)
        self.device = device
        self.hparams = hparams
        self.num_classes = 0
        self.features = None  # an edgecl.features.FeatureExtractor; the experiment sets its own
        self.backbone_factory = None  # builds a further backbone by name (create_learner's ``backbones``)

    @property
    def embedding_frozen(self) -> bool:
        """True when ``embedding_module()`` will not change any more in this run (its embeddings can be
        computed once for a whole data split and reused); learners that train it later override this."""
        return True

    # ------------------------------------------------------------ training
    @abc.abstractmethod
    def fit_task(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], progress: Callable | None = None) -> None:
        """Learn the classes present in ``loader`` (new classes of one task)."""

    # ----------------------------------------------------------- inference
    @abc.abstractmethod
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, num_classes)`` for embeddings ``feats`` ``(N, D)`` of ``embedding_module()`` (CPU)."""

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, num_classes)`` for preprocessed images ``x``."""
        return self.scores(self.embedding_module()(x.to(self.device)).float().cpu())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x.to(self.device)).argmax(dim=1).cpu()

    @torch.no_grad()
    def embed(self, loader, progress: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and labels of one pass over ``loader`` (in its order); a ``BatchLoader``'s through
        ``self.features``, any other iterable of ``(x, y)`` batch by batch."""
        if isinstance(loader, BatchLoader):
            idx = local_rows(loader.next_order())  # this rank's rows under torch.distributed
            features = self.features or self.default_features(loader)
            feats = features.embed(self.embedding_module(), loader.dataset, idx, frozen=self.embedding_frozen,
                                   progress=progress)
            return feats, torch.from_numpy(loader.dataset.labels[idx])
        feats, labels = [], []
        for x, y in progress(loader) if progress else loader:
            feats.append(self.embedding_module()(x.to(self.device)).float().cpu())
            labels.append(y)
        return torch.cat(feats), torch.cat(labels)

    def default_features(self, loader):
        """No cache, eager torch: every call embeds its images (a learner used outside an experiment)."""
        return FeatureExtractor(loader.input_size, loader.mean, loader.std, batch_size=loader.batch_size,
                                engine="torch", device=self.device)

    # ------------------------------------------------------- state, export
    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Everything learned, as numpy arrays (the backbone is saved separately)."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``state()`` output."""

    def embedding_module(self) -> nn.Module:
        """The module exported as ``backbone.onnx``: images -> embeddings."""
        return self.backbone

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        """``(head kind, arrays)`` for the runtime head."""
        return self.head_kind, self.state()
