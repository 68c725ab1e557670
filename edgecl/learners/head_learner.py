"""``HeadLearner``: a learner whose classifier is the very runtime head the device runs.

The classifier is an ``edgecl_runtime.heads`` object (numpy; ``head_class``): training
accumulates statistics into it, ``scores`` scores embeddings with it, ``export_head`` writes its
arrays and ``load_state`` rebuilds it with the runtime's own validation. The exported bundle
therefore scores exactly like the torch learner; the only difference left is ONNX vs torch for
the embedding (<= 1e-4). Prototype learners (SimpleCIL, APER, VPT, EASE), RanPAC, SLCA and
FeCAM are head learners.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgecl_runtime.errors import CorruptBundleError

from ..errors import NotTrainedError, StateError
from .hparams import ConfiguredLearner


class HeadLearner(ConfiguredLearner):
    """A ``ConfiguredLearner`` whose classifier is ``self.head``, an instance of ``head_class`` (``None``
    before the first task)."""

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.head = None

    @property
    def head_dim(self) -> int:
        """Width of the embeddings the head takes."""
        return self.backbone.embedding_dim

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise NotTrainedError(f"{self.name} has not learned any class yet")
        return torch.from_numpy(self.head.scores(feats.numpy()))

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        return self.head.kind, self.head.arrays()

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.head.arrays())

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._load_head(state)

    def _load_head(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild ``self.head`` from ``state`` with the runtime's own validation (``StateError`` if it does not fit)."""
        if "counts" not in state:
            raise StateError(f"{self.name} state has no head counts")
        n = int(np.asarray(state["counts"]).shape[0])
        try:
            self.head = self.head_class.from_arrays(state, n, self.head_dim)
        except CorruptBundleError as exc:
            raise StateError(f"{self.name} state does not fit: {exc}") from exc
        self.num_classes = n
