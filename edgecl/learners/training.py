"""First-session style training shared by learners: trainable features + a temporary head, cross-entropy.

APER, VPT, EASE and RanPAC adapt a frozen backbone through a few PEFT parameters by
classifying the classes of one task with a throw-away head; the head is then
discarded and the adapted features feed prototypes. ``fit_classifier`` is that
loop (``edgecl.loop.train``): AdamW over the given parameters and the head, cosine
learning-rate decay to zero, a fixed number of epochs over a re-iterable loader. Labels are mapped
to ``0..k-1`` over the classes present (``task_labels``).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import ConfigError
from ..loop import cosine_schedule, steps_per_epoch, train
from .labels import loader_labels, task_classes

HEAD_TYPES = ("cosine", "linear")


class CosineClassifier(nn.Module):
    """``s * cos(f, w_c)`` with a learnable scale ``s`` (as the CosineLinear heads of APER/EASE)."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T


def make_head(kind: str, dim: int, classes: int) -> nn.Module:
    if kind == "cosine":
        return CosineClassifier(dim, classes)
    if kind == "linear":
        return nn.Linear(dim, classes)
    raise ConfigError(f"head must be one of {', '.join(HEAD_TYPES)}, got {kind!r}")


def task_labels(loader: Iterable, num_classes: int, new_only: bool = False) -> torch.Tensor:
    """Sorted distinct labels of ``loader`` (of every rank's part under torch.distributed) for a learner that
    knows ``num_classes`` classes, checked by ``task_classes`` (``LabelError``)."""
    present = distributed.all_classes(loader_labels(loader))
    task_classes(present, num_classes, new_only)
    return torch.from_numpy(np.asarray(present))


class _Tally:
    """Loss and accuracy of one epoch, batch by batch."""

    def __init__(self):
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.item() * len(y)
        self.correct += int((logits.argmax(1) == y).sum())
        self.seen += len(y)

    def stats(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.seen, 1), "accuracy": self.correct / max(self.seen, 1)}


def fit_classifier(
    features: Callable[[torch.Tensor], torch.Tensor],
    params: list[nn.Parameter],
    loader: Iterable,
    classes: torch.Tensor,
    dim: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    head: str = "cosine",
    device: str = "cpu",
    seed: int = 0,
    progress: Callable | None = None,
) -> dict[str, float]:
    """Train ``params`` (reached through ``features``) and a new head on ``loader``; returns the last epoch's loss/accuracy."""
    torch.manual_seed(seed)
    clf = make_head(head, dim, len(classes)).to(device)
    model = distributed.data_parallel(distributed.Composed(features, clf), loader)  # DDP under torch.distributed
    lookup = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    lookup[classes] = torch.arange(len(classes))
    opt = torch.optim.AdamW(list(params) + list(clf.parameters()), lr=lr, weight_decay=weight_decay)
    per_epoch = steps_per_epoch(loader)
    sched = cosine_schedule(opt, max(1, epochs * per_epoch)) if per_epoch is not None else None
    stats = {"loss": float("nan"), "accuracy": float("nan")}
    for _ in range(epochs):
        tally = _Tally()

        def loss_fn(batch):
            x, y = batch[0].to(device), lookup[batch[1]].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            tally.add(loss, logits, y)
            return loss

        train(progress(loader) if progress else loader, loss_fn, opt, sched)
        stats = tally.stats()
    for p in params:
        p.grad = None
    return stats


def adapt_first_session(peft, loader, classes: torch.Tensor, dim: int, hp: dict, device: str = "cpu",
                        progress: Callable | None = None) -> dict[str, float]:
    """Train ``peft``'s PEFT parameters on the first task with a temporary classifier, then freeze them (APER's
    first-session adaptation); ``hp`` holds ``epochs``, ``lr``, ``weight_decay``, ``head`` and ``seed``."""
    stats = fit_classifier(peft, peft.peft_parameters(), loader, classes, dim, epochs=hp["epochs"], lr=hp["lr"],
                           weight_decay=hp["weight_decay"], head=hp["head"], device=device, seed=hp["seed"],
                           progress=progress)
    peft.freeze()
    return stats

