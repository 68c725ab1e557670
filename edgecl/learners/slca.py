"""SLCA (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for Continual Learning on a Pre-trained Model", ICCV 2023).

**Slow learner.** On every task the last ``tune_blocks`` blocks of the backbone
(timm's block groups: ResNet stages' blocks, ViT blocks) are really fine-tuned
by cross-entropy with a small learning rate (``lr_backbone``) while a fresh
task classifier learns fast (``lr_head``); the rest of the backbone stays
frozen, BatchNorm statistics included, which keeps the default affordable on
a CPU. ``tune_blocks`` raises the depth.

**Classifier alignment, in closed form.** SLCA keeps each class's Gaussian
statistics (mean, covariance) of the features from the backbone of its task,
samples features from all classes' Gaussians and re-trains the classifier on
them. Here the classifier is trained with a squared loss on one-hot targets
(ridge regression), and for that loss the expected objective over Gaussian
samples depends on the class statistics only through ``n_c`` (count),
``n_c mu_c`` (sum) and ``n_c (Sigma_c + mu_c mu_c^T)`` (second moment): the
infinite-sample limit of "sample and re-train" is exactly the ridge solution
``W = (G + lam I)^-1 Q`` with ``G = sum_c n_c (Sigma_c + mu_c mu_c^T)`` and
``Q[:, c] = n_c mu_c``, without sampling noise. The learner therefore keeps
these summed statistics (``D x D``, not one covariance per class), adds each
task's classes with the features of the backbone as it was after that task
(the same stale statistics as SLCA's), re-chooses ``lam`` on the task's data
as RanPAC does, and re-solves.

**What is exported and why.** The bundle holds the fine-tuned backbone and
the runtime's ``ridge`` head without a random projection (identity features),
which is this learner's classifier itself, so the runtime predicts exactly like
the torch learner. A class added on the device is embedded by the final
backbone (as a class of a further task would be, had it been learned without
more fine-tuning) and added to ``G`` and ``Q`` exactly: the result equals the
learner's own closed-form alignment with that class's statistics included.
A CE-trained linear head would instead need either gradient steps on the
device or an uncalibrated rule for new rows.

Hyper-parameters: ``epochs`` (2), ``lr_backbone`` (0.001), ``lr_head`` (0.05)
(SGD, momentum 0.9, weight decay 5e-4, cosine schedule), ``tune_blocks`` (1),
``seed`` (0), and as RanPAC ``lambda_min_exp`` / ``lambda_max_exp`` (-8 / 8),
``val_fraction`` (0.2).

``lr_backbone`` matters most. Statistics of a task's classes are taken on the
backbone as it is after that task, so a backbone that keeps moving leaves
earlier classes stale: on MobileNetV2-ImageNet (far from the glyph domain) the
default 0.001 ends below SimpleCIL with forgetting ~45, while 0.0001 or 0
(frozen) ends 7-8 pt above it (``benchmarks/results/slca-ablation-glyphs200-mnv2.md``).
On the embedded in-domain ViT the default is level with or above SimpleCIL.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .closed_form import RIDGE_DEFAULTS, HeadLearner, check_ridge_hparams, grow_ridge, task_classes
from .registry import register_learner


def last_blocks(model: nn.Module, k: int) -> list[nn.Parameter]:
    """Parameters of the last ``k`` blocks of a timm model (its fine-grained parameter groups)."""
    from .._compat import import_timm

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
    head_kind = "ridge"
    defaults = {"epochs": 2, "lr_backbone": 0.001, "lr_head": 0.05, "tune_blocks": 1, **RIDGE_DEFAULTS}
    positive = ("lr_head",)

    def __init__(self, backbone, device: str = "cpu", **hparams):
        super().__init__(backbone, device, **hparams)
        hp = self.hp
        check_ridge_hparams(self.name, hp)
        if hp["epochs"] < 0 or hp["tune_blocks"] < 0 or hp["lr_backbone"] < 0:
            raise ValueError("slca: epochs, tune_blocks and lr_backbone must be >= 0")

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
        self.head = grow_ridge(self.head, feats.numpy(), labels, self.num_classes, None, self.hp)
        self.num_classes = self.head.num_classes

    def _slow_learn(self, loader, params: list[nn.Parameter], progress) -> None:
        """Cross-entropy on the task's new classes: slow backbone blocks, fast throw-away linear classifier."""
        labels = distributed.all_classes(np.concatenate([y.numpy() for _, y in loader]))  # of every rank
        _, new = task_classes(labels, self.num_classes)
        if len(new) < 2:
            return  # cross-entropy needs two classes to learn anything
        hp = self.hp
        torch.manual_seed(hp["seed"] + self.num_classes)
        clf = nn.Linear(self.backbone.embedding_dim, len(new)).to(self.device)
        opt = torch.optim.SGD([{"params": params, "lr": hp["lr_backbone"]}, {"params": clf.parameters()}],
                              lr=hp["lr_head"], momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, hp["epochs"] * len(loader)))
        for p in params:
            p.requires_grad_(True)
        # DDP under torch.distributed
        model = distributed.data_parallel(distributed.Composed(self.backbone, clf), loader)
        try:
            for _ in range(hp["epochs"]):
                for x, y in progress(loader) if progress else loader:
                    keep = y >= new[0]  # a task may also revisit old classes: learn on its new ones
                    if keep.sum() == 0:
                        continue
                    loss = F.cross_entropy(model(x[keep].to(self.device)), (y[keep] - new[0]).to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
        finally:
            self.backbone.freeze()
            for p in params:
                p.grad = None

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        from edgecl_runtime.heads.ridge import RidgeHead

        self._load_head(RidgeHead, state)
        if self.head.W_rand is not None:
            raise ValueError("slca state has a random projection (W_rand); it is not an slca state")

