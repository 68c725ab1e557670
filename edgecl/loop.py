"""The one gradient-training loop: optimizer steps under a cosine schedule, with a logit-masking hook.

Every gradient-trained part of edgecl runs through ``train``: the first-session PEFT training
of APER, VPT, EASE and RanPAC (``edgecl.learners.training.fit_classifier``), the prompt learners
(``edgecl.learners.prompting``), SLCA's slow learner and the pre-training of the embedded
backbones (``edgecl.pretrain.trainer``). The learning rate follows ``cosine_factor`` (optional
linear warm-up, then cosine decay to 0); ``mask_logits`` hides the classes of earlier tasks from
a task's cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then cosine decay from 1 to 0
    at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def cosine_schedule(opt: torch.optim.Optimizer, total: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """``opt``'s learning rates (every parameter group) times ``cosine_factor``, stepped once per batch."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, total, warmup))


def mask_logits(logits: torch.Tensor, below: int) -> torch.Tensor:
    """``logits`` with the columns of classes ``< below`` at ``-inf``: a task's cross-entropy then does not
    push down the classes of earlier tasks."""
    return logits.masked_fill(torch.arange(logits.shape[1], device=logits.device) < below, -math.inf)


def steps_per_epoch(loader: Iterable) -> int | None:
    """Batches in one pass over ``loader``, or ``None`` when it has no length."""
    return len(loader) if hasattr(loader, "__len__") else None


def epochs(loader: Iterable, n: int, progress: Callable | None = None) -> Iterator[Any]:
    """The batches of ``n`` passes over ``loader``, each pass wrapped in ``progress`` (e.g. a progress bar)."""
    for _ in range(n):
        yield from progress(loader) if progress else loader


def train(
    batches: Iterable[Any],
    loss_fn: Callable[[Any], torch.Tensor | None],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    clip_params: Iterable[nn.Parameter] = (),
    clip_grad: float = 0.0,
    on_step: Callable[[torch.Tensor], None] | None = None,
) -> None:
    """For each batch: ``loss_fn(batch)`` (``None`` skips the batch), backward, gradient norm of
    ``clip_params`` clipped to ``clip_grad`` (0: off), optimizer step, schedule step, ``on_step(loss)``."""
    clip_params = list(clip_params)
    for batch in batches:
        loss = loss_fn(batch)
        if loss is None:
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(clip_params, clip_grad)
        opt.step()
        if sched is not None:
            sched.step()
        if on_step is not None:
            on_step(loss)
