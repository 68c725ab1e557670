"""FeCAM (Goswami et al., "FeCAM: Exploiting the Heterogeneity of Class Distributions in Exemplar-Free Continual Learning", NeurIPS 2023).

The backbone stays frozen and is never trained. Each class is a Gaussian over
Tukey-transformed embeddings (``sign(e) |e|^beta``): its mean and covariance,
the covariance shrunk towards its mean variance and mean covariance and
normalised to a correlation matrix; an image goes to the class at the smallest
Mahalanobis distance between L2-normalised vectors. Classes never interact,
so nothing is forgotten, and a class can be added (or extended) from a few
examples exactly.

The classifier is the runtime's ``gaussian`` head itself
(``edgecl_runtime.heads.gaussian``: per-class counts, means and scatter matrices,
merged with Welford's formulas; shrinkage applied at predict time), so the
bundle scores exactly like this learner. It holds ``C x D x D`` float32
values (1 MiB per class for D = 512).

Hyper-parameters: ``beta`` (0.5, Tukey exponent; 1 = none), ``shrink1`` (1.0,
diagonal shrinkage), ``shrink2`` (1.0, off-diagonal shrinkage),
``normalize_cov`` (true).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgecl_runtime.heads.gaussian import GaussianHead

from .. import distributed
from ..errors import StateError
from .head_learner import HeadLearner
from .labels import task_classes
from .registry import register_learner


@register_learner
class FeCAM(HeadLearner):
    name = "fecam"
    head_class = GaussianHead
    defaults = {"beta": 0.5, "shrink1": 1.0, "shrink2": 1.0, "normalize_cov": True}

    def __init__(self, backbone, device: str = "cpu", **hparams):
        super().__init__(backbone, device, **hparams)
        hp = self.hp
        self.head = GaussianHead.empty(backbone.embedding_dim, hp["beta"], (hp["shrink1"], hp["shrink2"]),
                                       hp["normalize_cov"])

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        feats, labels = self.embed(loader, progress)
        feats, labels = feats.numpy(), labels.numpy()
        old, new = task_classes(distributed.all_classes(labels), self.num_classes)
        head = self.head
        if distributed.is_distributed():  # per-class moments summed over ranks
            head = distributed.gaussian_update(head, feats, labels, old + new, self.num_classes)
        else:
            for c in old + new:
                head = head.with_examples(c if c < self.num_classes else None, feats[labels == c])
        self.head, self.num_classes = head, head.num_classes

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._load_head(state)
        hp = self.hp
        if (self.head.beta, self.head.shrink, self.head.normalize_cov) != (
            hp["beta"], (hp["shrink1"], hp["shrink2"]), hp["normalize_cov"]
        ):
            raise StateError("fecam state does not match the beta/shrink1/shrink2/normalize_cov hyper-parameters")
