"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023).

The backbone stays frozen; each class is its prototype (mean embedding of its
training images) and a cosine classifier scores an image against every
prototype. Nothing is trained, so nothing is forgotten: old prototypes never
change, and a class can be added later from a few examples (which is what the
runtime does on the device).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import class_sums
from .base import Learner
from .registry import register_learner


@register_learner
class SimpleCIL(Learner):
    name = "simplecil"
    head_kind = "prototype_cosine"

    def __init__(self, backbone, device: str = "cpu", **hparams):
        if hparams:
            raise ValueError(f"simplecil takes no hyper-parameters, got {sorted(hparams)}")
        super().__init__(backbone, device)
        self._sums = torch.zeros(0, backbone.embedding_dim, dtype=torch.float64)
        self._counts = torch.zeros(0, dtype=torch.int64)

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        feats, labels = self.embed(loader, progress)
        sums, counts = class_sums(feats, labels, self.num_classes)  # over all ranks under torch.distributed
        n = len(counts)
        if n > self._sums.shape[0]:
            pad = n - self._sums.shape[0]
            self._sums = torch.cat([self._sums, torch.zeros(pad, self._sums.shape[1], dtype=torch.float64)])
            self._counts = torch.cat([self._counts, torch.zeros(pad, dtype=torch.int64)])
        self._sums[:n] += sums
        self._counts[:n] += counts
        missing = (self._counts[:n] == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"classes {missing} have no training samples")
        self.num_classes = n

    @property
    def prototypes(self) -> torch.Tensor:
        return (self._sums / self._counts[:, None]).float()

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats, dim=1) @ F.normalize(self.prototypes, dim=1).T

    def state(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes.numpy(), "counts": self._counts.numpy().copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        protos = torch.as_tensor(np.asarray(state["prototypes"]), dtype=torch.float64)
        counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        if protos.ndim != 2 or protos.shape[1] != self.backbone.embedding_dim or counts.shape != protos.shape[:1]:
            raise ValueError(f"state shapes {tuple(protos.shape)}/{tuple(counts.shape)} do not fit this backbone")
        self._sums, self._counts = protos * counts[:, None], counts
        self.num_classes = protos.shape[0]
