"""CoFiMA (Marouf et al., "Weighted Ensemble Models Are Strong Continual Learners", ECCV 2024).

SLCA's recipe (``edgecl.learners.slca``) with the network merged after every
task. On task ``t`` the last ``tune_blocks`` blocks are fine-tuned (slow learner)
starting from the previous merged weights ``theta*_{t-1}``, giving ``theta_t``;
the diagonal Fisher information of the task's loss at ``theta_t`` is estimated
as the mean over the task's batches of the squared gradient of the batch loss
(cross-entropy of the task's classifier), capped at ``fisher_max`` (the
reference code's ``getFisherDiagonal`` and ``fishermax``); then, per parameter,

    theta*_t = ((1 - alpha) F_{t-1} theta*_{t-1} + alpha F_t theta_t) / ((1 - alpha) F_{t-1} + alpha F_t)

with ``F_{t-1}`` the Fisher estimated at task ``t - 1`` (the reference code's
``interpolate_weights(..., fisher=True)`` with ``init_w=-1``; the first task
is not merged). Where both Fishers are 0 (a parameter no loss reached) the
plain average ``(1 - alpha) theta*_{t-1} + alpha theta_t`` is taken instead of 0/0.

The bundle holds the one merged network: the same graph and cost as SimpleCIL
on the same backbone, only the weights of the tuned blocks differ. Classifier:
as SLCA, the runtime's ``ridge`` head in closed form (the limit of the paper's
classifier alignment on sampled class Gaussians), each task's classes added
with the merged network of that task; the device adds a class from images
exactly as SLCA's bundles do. Old classes' statistics are not recomputed after
later merges (no old data is kept).

Hyper-parameters: SLCA's (``epochs``, ``lr_backbone``, ``lr_head``, ``tune_blocks``,
ridge ones, ``seed``) and ``alpha`` (0.4, weight of the new task's weights,
the reference ``wt_alpha``), ``fisher_max`` (1e-4).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import StateError
from .closed_form import grow_ridge
from .hparams import require
from .registry import register_learner
from .slca import SLCA, last_blocks

FISHER_PREFIX = "fisher."


def diagonal_fisher(params: dict[str, nn.Parameter], batches: Iterable, loss_fn: Callable,
                    cap: float) -> dict[str, torch.Tensor]:
    """Mean over ``batches`` of the squared gradient of ``loss_fn(batch)`` (``None``: skipped) w.r.t. each of
    ``params``, capped at ``cap``."""
    names = list(params)
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    seen = 0
    for batch in batches:
        loss = loss_fn(batch)
        if loss is None:
            continue
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                sums[n] += g.detach().double() ** 2
        seen += 1
    return {n: (s / max(seen, 1)).clamp(max=cap).float() for n, s in sums.items()}


@torch.no_grad()
def fisher_merge(prev: dict[str, torch.Tensor], new: dict[str, torch.Tensor], f_prev: dict[str, torch.Tensor],
                 f_new: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Fisher-weighted average of two sets of weights (see module doc), per parameter name of ``new``."""
    out = {}
    for n, theta in new.items():
        a, b = (1 - alpha) * f_prev[n].double(), alpha * f_new[n].double()
        den = a + b
        plain = (1 - alpha) * prev[n].double() + alpha * theta.double()
        weighted = (a * prev[n].double() + b * theta.double()) / torch.where(den > 0, den, torch.ones_like(den))
        out[n] = torch.where(den > 0, weighted, plain).to(theta.dtype)
    return out


@register_learner
class CoFiMA(SLCA):
    name = "cofima"
    defaults = {**SLCA.defaults, "alpha": 0.4, "fisher_max": 1e-4}
    positive = (*SLCA.positive, "fisher_max")
    hparam_help = {
        "alpha": "weight of the new task's fine-tuned weights in the Fisher-weighted merge (0..1)",
        "fisher_max": "cap of every diagonal Fisher entry",
    }

    def validate(self, hp) -> None:
        super().validate(hp)
        require(self.name, 0.0 <= hp["alpha"] <= 1.0, f"alpha must lie in [0, 1], got {hp['alpha']}")

    def __init__(self, backbone, device: str = "cpu", **hparams):
        super().__init__(backbone, device, **hparams)
        self.fisher: dict[str, torch.Tensor] | None = None  # of the latest task's fine-tuned weights

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        named = self._tuned()
        if named and self.hp["epochs"] > 0:
            prev = {n: p.detach().clone() for n, p in named.items()}  # theta*_{t-1}
            first_new = self.num_classes
            clf = self._slow_learn(loader, list(named.values()), progress)
            if clf is not None:
                fisher = self._fisher(loader, named, clf, first_new)
                if self.fisher is not None:
                    merged = fisher_merge(prev, {n: p.detach().clone() for n, p in named.items()}, self.fisher, fisher,
                                          self.hp["alpha"])
                    with torch.no_grad():
                        for n, p in named.items():
                            p.copy_(merged[n])
                self.fisher = fisher
        feats, labels = self.embed(loader, progress)
        self.head = grow_ridge(self.head, feats.numpy(), labels.numpy(), self.num_classes, None, self.hp,
                               distributed.last_order(loader))
        self.num_classes = self.head.num_classes

    def _tuned(self) -> dict[str, nn.Parameter]:
        """The fine-tuned parameters (SLCA's last blocks) by name."""
        ids = {id(p) for p in last_blocks(self.backbone.model, self.hp["tune_blocks"])}
        return {n: p for n, p in self.backbone.model.named_parameters() if id(p) in ids}

    def _fisher(self, loader, named: dict[str, nn.Parameter], clf: nn.Module, first_new: int) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the task's cross-entropy (the task classifier ``clf``) at the fine-tuned weights."""

        def loss_fn(batch):
            x, y = batch
            keep = y >= first_new
            if keep.sum() == 0:
                return None
            logits = clf(self.backbone(x[keep].to(self.device)))
            return F.cross_entropy(logits, (y[keep] - first_new).to(self.device))

        for p in named.values():
            p.requires_grad_(True)
        try:
            return diagonal_fisher(named, loader, loss_fn, self.hp["fisher_max"])
        finally:
            self.backbone.freeze()

    # --------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        fisher = {FISHER_PREFIX + n: f.numpy() for n, f in (self.fisher or {}).items()}
        return {**super().state(), **fisher}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        super().load_state({k: v for k, v in state.items() if not k.startswith(FISHER_PREFIX)})
        fisher = {k[len(FISHER_PREFIX):]: torch.as_tensor(np.asarray(v)) for k, v in state.items()
                  if k.startswith(FISHER_PREFIX)}
        named = self._tuned()
        if fisher and (set(fisher) != set(named) or any(fisher[n].shape != named[n].shape for n in named)):
            raise StateError("cofima state: the Fisher arrays do not fit the fine-tuned blocks")
        self.fisher = fisher or None
