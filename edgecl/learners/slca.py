"""SLCA (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for Continual Learning on a Pre-trained Model", ICCV 2023).

**Slow learner.** On every task the last ``tune_blocks`` blocks of the backbone
(timm's block groups) are fine-tuned by cross-entropy on the task's new classes
with a small learning rate (``lr_backbone``) while a throw-away linear classifier
learns fast (``lr_head``): SGD, momentum 0.9, weight decay 5e-4, cosine schedule
(``edgecl.loop``). The rest of the backbone stays frozen, BatchNorm statistics included.

**Classifier alignment, in closed form.** The classifier is the runtime's ``ridge``
head without a random projection: ``W = (G + lam I)^-1 Q`` over the summed second
moments ``G`` and class sums ``Q`` of the features, each task's classes added with
the backbone as it is after that task, ``lam`` re-chosen on the task's data as
RanPAC does (``closed_form.grow_ridge``). This equals SLCA's "sample from the class
Gaussians and re-train" in the infinite-sample limit for a squared loss. The bundle
holds the fine-tuned backbone and that head, so the device predicts exactly like
the learner and adds a class exactly.

Hyper-parameters: ``epochs`` (2), ``lr_backbone`` (0.001), ``lr_head`` (0.05),
``tune_blocks`` (1), ``seed`` (0), and as RanPAC ``lambda_min_exp`` /
``lambda_max_exp`` (-8 / 8), ``val_fraction`` (0.2). The derivation and the
measured effect of ``lr_backbone``: ``docs/notes-slca.md``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.ridge import RidgeHead

from .. import distributed
from .._compat import import_timm
from ..errors import StateError
from ..loop import cosine_schedule, epochs, train
from .closed_form import RIDGE_DEFAULTS, check_ridge_hparams, grow_ridge
from .head_learner import HeadLearner
from .hparams import require
from .labels import loader_labels, task_classes
from .registry import register_learner


def last_blocks(model: nn.Module, k: int) -> list[nn.Parameter]:
    """Parameters of the last ``k`` blocks of a timm model (its fine-grained parameter groups)."""
    if k <= 0:
        return []
    named = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        timm = import_timm()
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=False))
        names = [n for g in sorted(groups)[-k:] for n in groups[g]]
    else:  # any nn.Module: its last k top-level children that have parameters
        children = [(n, c) for n, c in model.named_children() if any(True for _ in c.parameters())]
        names = [f"{n}.{p}" for n, c in children[-k:] for p, _ in c.named_parameters()]
    return [named[n] for n in names]


@register_learner
class SLCA(HeadLearner):
    name = "slca"
    head_class = RidgeHead
    defaults = {"epochs": 2, "lr_backbone": 0.001, "lr_head": 0.05, "tune_blocks": 1, **RIDGE_DEFAULTS}
    positive = ("lr_head",)

    def validate(self, hp) -> None:
        super().validate(hp)
        check_ridge_hparams(self.name, hp)
        require(self.name, hp["epochs"] >= 0 and hp["tune_blocks"] >= 0 and hp["lr_backbone"] >= 0,
                "epochs, tune_blocks and lr_backbone must be >= 0")

    @property
    def embedding_frozen(self) -> bool:
        hp = self.hp
        return hp["tune_blocks"] == 0 or hp["epochs"] == 0 or hp["lr_backbone"] == 0  # else fine-tuned every task

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        params = last_blocks(self.backbone.model, self.hp["tune_blocks"])
        if params and self.hp["epochs"] > 0:
            self._slow_learn(loader, params, progress)
        feats, labels = self.embed(loader, progress)
        labels = labels.numpy()
        self.head = grow_ridge(self.head, feats.numpy(), labels, self.num_classes, None, self.hp,
                               distributed.last_order(loader))
        self.num_classes = self.head.num_classes

    def _slow_learn(self, loader, params: list[nn.Parameter], progress) -> nn.Module | None:
        """Cross-entropy on the task's new classes: slow backbone blocks, fast throw-away linear classifier
        (returned; ``None`` when the task has fewer than two new classes and nothing was trained)."""
        _, new = task_classes(distributed.all_classes(loader_labels(loader)), self.num_classes)  # of every rank
        if len(new) < 2:
            return None  # cross-entropy needs two classes to learn anything
        hp = self.hp
        torch.manual_seed(hp["seed"] + self.num_classes)
        clf = nn.Linear(self.backbone.embedding_dim, len(new)).to(self.device)
        opt = torch.optim.SGD([{"params": params, "lr": hp["lr_backbone"]}, {"params": clf.parameters()}],
                              lr=hp["lr_head"], momentum=0.9, weight_decay=5e-4)

        def loss_fn(batch):
            x, y = batch
            keep = y >= new[0]  # a task may also revisit old classes: learn on its new ones
            if keep.sum() == 0:
                return None
            return F.cross_entropy(model(x[keep].to(self.device)), (y[keep] - new[0]).to(self.device))

        for p in params:
            p.requires_grad_(True)
        model = distributed.data_parallel(distributed.Composed(self.backbone, clf), loader)  # DDP under torch.distributed
        try:
            sched = cosine_schedule(opt, max(1, hp["epochs"] * len(loader)))
            train(epochs(loader, hp["epochs"], progress), loss_fn, opt, sched)
        finally:
            self.backbone.freeze()
            for p in params:
                p.grad = None
        return clf

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._load_head(state)
        if self.head.W_rand is not None:
            raise StateError("slca state has a random projection (W_rand); it is not an slca state")

