"""Supervised pre-training of a timm backbone from a :class:`Recipe`.

One linear head per task head on the ``num_classes=0`` embedding, summed
cross-entropy (optional label smoothing), AdamW with linear warm-up then cosine
decay, fresh batches every step from the task, through the one training loop
(``edgecl.loop.train``). Loss and held-out accuracy are
reported through ``log``; the result keeps only the backbone (the heads are
throw-away).

Determinism: the run seeds torch and numpy from ``recipe.seed``, enables
``torch.use_deterministic_algorithms`` and (with ``threads``) fixes the intra-op
thread count for its duration, restoring all three afterwards. Same recipe, same
thread count, same torch build and CPU type -> bit-identical weights.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from edgecl_runtime.preprocess import preprocess

from ..backbones import timm_models
from ..loop import cosine_schedule, train
from .recipe import Recipe
from .tasks import Resolve, make_task


@dataclass
class PretrainResult:
    """The pre-trained backbone (``num_classes=0``, eval mode) and what the run measured."""

    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    """Seed torch and numpy, force deterministic kernels and a thread count; restore on exit."""
    prev_det, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def build_model(recipe: Recipe) -> nn.Module:
    """The recipe's timm model, randomly initialised from the current torch RNG, ``num_classes=0``."""
    return timm_models().create_model(recipe.timm_name, pretrained=False, num_classes=0, **recipe.model_kwargs)


def init_states(recipe: Recipe, resolve: Resolve | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """``recipe.init``'s state dicts, per submodule prefix, from the backbones ``resolve`` builds (made
    before seeding: a backbone made on first use here must not change the random stream of the run)."""
    if recipe.init and resolve is None:
        raise ValueError("recipe init names backbones: pass resolve= (edgecl.zoo.create_backbone) to build them")
    return {prefix: resolve(name).model.state_dict() for prefix, name in recipe.init.items()}


def apply_init(model: nn.Module, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load each state dict into the submodule at its prefix; every parameter there must be covered."""
    for prefix, state in states.items():
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            raise ValueError(f"recipe init: the model has no submodule {prefix!r}") from None
        own = module.state_dict()
        picked = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"recipe init of {prefix!r}: {len(missing)} of {len(own)} entries not found, e.g. {missing[:3]}")
        bad = [k for k, v in picked.items() if v.shape != own[k].shape]
        if bad:
            raise ValueError(f"recipe init of {prefix!r}: shape mismatch for {bad[:3]}")
        module.load_state_dict(picked)


def _to_tensor(images: np.ndarray, recipe: Recipe) -> torch.Tensor:
    return torch.from_numpy(preprocess(images, recipe.input_size, recipe.mean, recipe.std))


def _loss(out: torch.Tensor, target: np.ndarray, regression: bool, recipe: Recipe) -> torch.Tensor:
    """Cross-entropy for a class head, 1 - cosine similarity for a regression target."""
    if regression:
        return 1 - nn.functional.cosine_similarity(out, torch.from_numpy(target), dim=1).mean()
    return nn.functional.cross_entropy(out, torch.from_numpy(target), label_smoothing=recipe.label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, heads: nn.ModuleDict, recipe: Recipe, holdout, batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy of every class head (``acc_*``), mean cosine to every target (``cos_*``), held out."""
    images, labels = holdout
    was_training = model.training
    model.eval()
    total = {k: 0.0 for k in heads}
    for i in range(0, len(images), batch_size):
        feats = model(_to_tensor(images[i : i + batch_size], recipe))
        for k, head in heads.items():
            out, target = head(feats), torch.from_numpy(np.asarray(labels[k][i : i + batch_size]))
            if target.is_floating_point():
                total[k] += float(nn.functional.cosine_similarity(out, target, dim=1).sum())
            else:
                total[k] += float((out.argmax(1) == target).sum())
    model.train(was_training)
    n = max(1, len(images))
    return {(f"cos_{k}" if np.asarray(labels[k]).dtype.kind == "f" else f"acc_{k}"): v / n for k, v in total.items()}


class _Log:
    """The run's history: mean loss every ``log_every`` steps, held-out metrics every ``eval_every``."""

    def __init__(self, recipe, model, heads, holdout, opt, log, log_every: int, eval_every: int):
        self.recipe, self.model, self.heads, self.holdout, self.opt = recipe, model, heads, holdout, opt
        self.log, self.log_every, self.eval_every = log, log_every, eval_every
        self.t0, self.done, self.window = time.perf_counter(), 0, []
        self.history: list[dict[str, float]] = []
        self.last: dict[str, float] = {}

    def step(self, loss: torch.Tensor) -> None:
        self.window.append(float(loss.item()))
        self.done += 1
        done, entry = self.done, None
        if self.log_every and (done % self.log_every == 0 or done == self.recipe.steps):
            entry = {"step": done, "loss": float(np.mean(self.window)), "lr": self.opt.param_groups[0]["lr"]}
            self.window = []
        if self.eval_every and (done % self.eval_every == 0 or done == self.recipe.steps):
            entry = dict(entry or {"step": done}, **evaluate(self.model, self.heads, self.recipe, self.holdout))
        if entry is not None:
            entry["seconds"] = time.perf_counter() - self.t0
            self.history.append(entry)
            if self.log:
                self.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))


def pretrain(
    recipe: Recipe,
    threads: int | None = None,
    progress: Callable | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 0,
    eval_every: int = 0,
    resolve: Resolve | None = None,
) -> PretrainResult:
    """Train ``recipe``'s backbone; ``progress`` wraps the step iterator (e.g. a progress bar).

    ``resolve(name, img_size=None)`` builds a backbone the recipe names (its ``init`` and a task's
    teacher), e.g. ``edgecl.zoo.create_backbone``; recipes that name none need no ``resolve``.
    """
    task = make_task(recipe, resolve)
    states = init_states(recipe, resolve)
    t0 = time.perf_counter()
    with deterministic(recipe.seed, threads):
        model = build_model(recipe)
        apply_init(model, states)
        dim = int(model.num_features)
        heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in {**task.heads, **task.targets}.items()})
        params = list(model.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = cosine_schedule(opt, recipe.steps, recipe.warmup_steps)
        history = _Log(recipe, model, heads, task.holdout(), opt, log, log_every, eval_every)
        model.train()

        def loss_fn(batch):
            images, labels = batch
            feats = model(_to_tensor(images, recipe))
            losses = {k: _loss(head(feats), labels[k], k in task.targets, recipe) for k, head in heads.items()}
            history.last = {f"loss_{k}": v.item() for k, v in losses.items()}
            return sum(losses.values())

        steps = range(recipe.steps)
        batches = (batch for _, batch in zip(progress(steps) if progress else steps, task.batches()))
        train(batches, loss_fn, opt, sched, clip_params=params, clip_grad=recipe.clip_grad, on_step=history.step)
        last = history.last
        metrics = dict(last, loss=sum(last.values()), **evaluate(model, heads, recipe, history.holdout))
    metrics["seconds"] = time.perf_counter() - t0
    model.eval()
    return PretrainResult(model=model, metrics=metrics, history=history.history)
