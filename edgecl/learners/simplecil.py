"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023).

The backbone stays frozen; each class is its prototype (mean embedding of its
training images) and a cosine classifier scores an image against every
prototype. Nothing is trained, so nothing is forgotten: old prototypes never
change, and a class can be added later from a few examples (which is what the
runtime does on the device).
"""

from __future__ import annotations

from .prototypes import PrototypeLearner
from .registry import register_learner


@register_learner
class SimpleCIL(PrototypeLearner):
    name = "simplecil"

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def embedding_module(self):
        return self.backbone
