"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning", NeurIPS 2023).

The backbone stays frozen (optionally adapted once, on the first task, with a
PEFT module from ``edgecl.peft``: ``first_session=adapter|ssf|vpt_shallow|vpt_deep``,
trained with a cosine classifier and then frozen, as RanPAC's phase 1). Each
embedding ``e`` goes through a fixed random projection with a ReLU,
``h = relu(e W_rand)`` (``W_rand``: ``D x M``, N(0, 1), seeded), and a ridge
classifier ``W = (G + lam I)^-1 Q`` decorrelates the class prototypes, with
``G = sum h h^T`` and ``Q = sum h y^T`` accumulated over all tasks in float64.
``lam`` is re-chosen on every task from RanPAC's grid 10^-8..10^8 by the
validation MSE of an 80/20 split of that task's data, then applied to the
accumulated statistics. ``M=0`` skips the projection (decorrelation of the
raw features, RanPAC's "no RP" ablation).

The classifier is the runtime's ``ridge`` head itself (``edgecl_runtime.heads.ridge``),
so the bundle scores exactly like this learner, and the device adds classes
with the same update: ``G += H^T H``, ``Q[:, c] += H^T 1``, re-solved in
O(M^2 k) by a Woodbury update. The learner's head holds ``G`` and its inverse
(``M x M`` float64) and ``W_rand`` (``D x M`` float32); a bundle stores ``G``'s
upper triangle only, with ``W_rand`` in its graph, and a device forms ``G`` and
the inverse when it first learns.

Hyper-parameters: ``M`` (2048), ``seed`` (0, of ``W_rand``, the split and the
adaptation), ``lambda_min_exp`` / ``lambda_max_exp`` (-8 / 8: the grid
``10^k``), ``val_fraction`` (0.2), ``first_session`` (``none``), and for the
adaptation (``edgecl.learners.training.adapt_first_session``, cosine head, AdamW)
``adapt_epochs`` (5), ``adapt_lr`` (0.001), ``bottleneck`` (16, adapter),
``prompt_length`` (5, VPT).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import nn

from edgecl_runtime.heads.ridge import RidgeHead

from .. import distributed
from ..errors import StateError
from ..peft import PEFT_METHODS, PeftModel
from .closed_form import RIDGE_DEFAULTS, check_ridge_hparams, grow_ridge
from .head_learner import HeadLearner
from .hparams import require
from .registry import register_learner
from .training import adapt_first_session, task_labels

PEFT_PREFIX = "peft."


@register_learner
class RanPAC(HeadLearner):
    name = "ranpac"
    head_class = RidgeHead
    defaults = {
        "M": 2048,
        **RIDGE_DEFAULTS,
        "first_session": "none",
        "adapt_epochs": 5,
        "adapt_lr": 1e-3,
        "bottleneck": 16,
        "prompt_length": 5,
    }
    choices = {"first_session": ("none", *PEFT_METHODS)}
    positive = ("adapt_lr", "bottleneck", "prompt_length")

    def validate(self, hp) -> None:
        super().validate(hp)
        check_ridge_hparams(self.name, hp)
        require(self.name, hp["M"] >= 0 and hp["adapt_epochs"] >= 0,
                "M (0: no random projection) and adapt_epochs must be >= 0")

    def __init__(self, backbone, device: str = "cpu", **hparams):
        super().__init__(backbone, device, **hparams)
        hp = self.hp
        rng = np.random.default_rng(hp["seed"])
        self.W_rand = rng.standard_normal((backbone.embedding_dim, hp["M"])).astype(np.float32) if hp["M"] else None
        self.peft, self.adapted = None, False
        if hp["first_session"] != "none":
            self.peft = PeftModel(self.backbone.model, hp["first_session"], bottleneck=hp["bottleneck"],
                                  prompt_length=hp["prompt_length"], seed=hp["seed"]).to(device)

    def embedding_module(self) -> nn.Module:
        return self.peft if self.peft is not None else self.backbone

    @property
    def embedding_frozen(self) -> bool:
        # the PEFT module trains on the first task only (before its first embedding), then stays frozen
        return self.peft is None or self.num_classes > 0 or self.hp["adapt_epochs"] == 0 or self.adapted

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        if self.peft is not None and self.num_classes == 0 and self.hp["adapt_epochs"] > 0:
            self._adapt(loader, progress)
        feats, labels = self.embed(loader, progress)
        labels = labels.numpy()
        self.head = grow_ridge(self.head, feats.numpy(), labels, self.num_classes, self.W_rand, self.hp,
                               distributed.last_order(loader))
        self.num_classes = self.head.num_classes

    def _adapt(self, loader, progress) -> None:
        """Phase 1: train the PEFT module on the first task with a cosine classifier, then freeze it."""
        hp = self.hp
        adapt = {"epochs": hp["adapt_epochs"], "lr": hp["adapt_lr"], "weight_decay": 0.0, "head": "cosine",
                 "seed": hp["seed"]}
        adapt_first_session(self.peft, loader, task_labels(loader, 0), self.backbone.embedding_dim, adapt,
                            self.device, progress)
        self.adapted = True

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        if self.peft is not None:
            out.update({PEFT_PREFIX + k: v.numpy() for k, v in self.peft.peft_state().items()})
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        peft = {k[len(PEFT_PREFIX):]: v for k, v in state.items() if k.startswith(PEFT_PREFIX)}
        if bool(peft) != (self.peft is not None):
            raise StateError("ranpac state and first_session hyper-parameter disagree about a PEFT module")
        if self.peft is not None:
            self.peft.load_peft_state(peft)
        head_state = {k: v for k, v in state.items() if not k.startswith(PEFT_PREFIX)}
        self._load_head(head_state)
        if (self.W_rand is None) != (self.head.W_rand is None) or (
            self.W_rand is not None and not np.array_equal(self.W_rand, self.head.W_rand)
        ):
            raise StateError("ranpac state has a W_rand that does not match the M/seed hyper-parameters")
