"""First-session style training shared by learners: trainable features + a temporary head, cross-entropy.

APER, VPT and EASE adapt a frozen backbone through a few PEFT parameters by
classifying the classes of one task with a throw-away head; the head is then
discarded and the adapted features feed prototypes. ``fit_classifier`` is that
loop: AdamW over the given parameters and the head, cosine learning-rate decay
to zero, a fixed number of epochs over a re-iterable loader. Labels are mapped
to ``0..k-1`` over the classes present (``task_labels``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed

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
    raise ValueError(f"head must be one of {', '.join(HEAD_TYPES)}, got {kind!r}")


def task_labels(loader: Iterable) -> torch.Tensor:
    """Sorted distinct labels of ``loader`` (of every rank's part under torch.distributed); ``ValueError`` if
    it is empty."""
    labels = [torch.as_tensor(y) for _, y in loader]
    present = distributed.all_classes(torch.cat(labels).numpy() if labels else np.zeros(0, np.int64))
    if len(present) == 0:
        raise ValueError("fit_task got no training samples")
    return torch.from_numpy(present)


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
    total = max(1, epochs * len(loader)) if hasattr(loader, "__len__") else None
    sched = None
    if total:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    stats = {"loss": float("nan"), "accuracy": float("nan")}
    for _ in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in progress(loader) if progress else loader:
            x, y = x.to(device), lookup[y].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        stats = {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}
    for p in params:
        p.grad = None
    return stats
