"""What L2P, DualPrompt and CODA-Prompt share: a prompt pool on a frozen ViT, trained task by task.

A ``PromptLearner`` wraps ``edgecl.peft.prompts.PromptedViT`` (query pass ->
pool -> prompted pass) and a head. Per task it trains the pool's trainable
parameters and a linear head with cross-entropy on *masked* logits (classes of
earlier tasks get ``-inf``, as in the original methods, so the head rows of old
classes are not pushed down) plus the pool's auxiliary loss times ``aux_coef``.

Heads (hparam ``head``):

* ``linear`` (default): the learned linear classifier of the original
  methods, exported as the runtime's ``linear`` head; it cannot learn
  classes on the device.
* ``prototype``: the linear head still drives training, but classes are
  scored by cosine similarity to prototypes (mean prompted embeddings, taken
  after each task's training) and exported as ``prototype_cosine``, so the
  device can add classes with the prompt pool frozen. Prototypes of earlier
  tasks are not recomputed when later tasks change a shared pool (no old data
  is kept), so they can drift.

Subclasses set ``name``, ``defaults`` (their hyper-parameters) and build the pool.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..peft.prompts import PromptedViT
from .base import Learner
from .hparams import resolve_hparams

HEADS = {"linear": "linear", "prototype": "prototype_cosine"}
COMMON_DEFAULTS: dict[str, Any] = {"epochs": 3, "lr": 0.01, "head": "linear", "seed": 0}


def block_list(hp: dict[str, Any], key: str) -> list[int]:
    """A hyper-parameter naming ViT blocks, ``"2,3,4"``, as a list of ints (``ValueError`` otherwise)."""
    try:
        blocks = [int(v) for v in str(hp[key]).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"hyper-parameter {key}={hp[key]!r} must be comma-separated block indices") from None
    if not blocks or len(set(blocks)) != len(blocks):
        raise ValueError(f"hyper-parameter {key}={hp[key]!r} must name distinct blocks")
    return blocks


class TaskClassifier(nn.Module):
    """One task's training forward: prompted embedding, logits of classes ``lo..hi-1`` (earlier ones masked),
    and the pool's auxiliary loss (``None`` if it has none)."""

    def __init__(self, net: nn.Module, weight: nn.Parameter, bias: nn.Parameter, task: int, lo: int, hi: int):
        super().__init__()
        self.net, self.weight, self.bias, self.task, self.lo, self.hi = net, weight, bias, task, lo, hi

    def forward(self, x: torch.Tensor):
        emb, aux = self.net.encode(x, self.task)
        logits = (emb @ self.weight.T + self.bias)[:, : self.hi]
        return logits.masked_fill(torch.arange(self.hi, device=x.device) < self.lo, -math.inf), aux


class PromptLearner(Learner):
    head_kind = "linear"  # per instance: see ``head`` hparam
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    positive: ClassVar[tuple[str, ...]] = ("epochs", "lr", "size", "length", "top_n", "g_length", "e_length", "per_task")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        choices = {"head": tuple(HEADS), **self.choices}
        hp = resolve_hparams(self.name, hparams, {**COMMON_DEFAULTS, **self.defaults}, choices, self.positive)
        super().__init__(backbone, device, **hp)
        self.hp = hp
        self.head_kind = HEADS[hp["head"]]
        torch.manual_seed(hp["seed"])
        pool = self.make_pool(backbone.embedding_dim, hp)
        self.net = PromptedViT(self.backbone, pool, self.pool_mode(hp), method=self.name).to(device)
        dim = backbone.embedding_dim
        self.weight = torch.zeros(0, dim)
        self.bias = torch.zeros(0)
        self.counts = torch.zeros(0, dtype=torch.int64)
        self.proto_sums = torch.zeros(0, dim, dtype=torch.float64)
        self.tasks = 0

    # ------------------------------------------------------------ subclass
    @abc.abstractmethod
    def make_pool(self, dim: int, hp: dict[str, Any]) -> nn.Module:
        """The prompt pool (``edgecl.peft.prompts``)."""

    def pool_mode(self, hp: dict[str, Any]) -> str:
        return "cls"

    aux_coef_name: ClassVar[str] = ""  # hparam weighing the pool's auxiliary loss

    # ------------------------------------------------------------ training
    def _grow(self) -> None:
        """One more task: pools that grow per task get their new (trainable) part."""
        if hasattr(self.net.pool, "add_task"):
            self.net.pool.add_task()
        self.tasks += 1

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        labels = torch.cat([y for _, y in loader])
        present = distributed.all_classes(labels.numpy())  # of every rank under torch.distributed
        if len(present) == 0:
            raise ValueError("fit_task got no training samples")
        lo, hi = self.num_classes, int(present.max()) + 1
        if int(present.min()) < lo:
            raise ValueError(f"task labels must be new classes >= {lo}, got {int(present.min())}")
        missing = sorted(set(range(lo, hi)) - set(present.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no training samples")
        torch.manual_seed(self.hp["seed"] + self.tasks)
        self._grow()
        task = self.tasks - 1
        dim = self.weight.shape[1]
        new = nn.Linear(dim, hi - lo)
        weight = nn.Parameter(torch.cat([self.weight, new.weight.data]).to(self.device))
        bias = nn.Parameter(torch.cat([self.bias, new.bias.data]).to(self.device))
        params = [p for p in self.net.pool.parameters() if p.requires_grad] + [weight, bias]
        opt = torch.optim.Adam(params, lr=self.hp["lr"])
        steps = self.hp["epochs"] * max(1, len(loader) if hasattr(loader, "__len__") else 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
        coef = float(self.hp.get(self.aux_coef_name, 0.0)) if self.aux_coef_name else 0.0
        # DDP under torch.distributed
        model = distributed.data_parallel(TaskClassifier(self.net, weight, bias, task, lo, hi), loader)
        for _ in range(self.hp["epochs"]):
            for x, y in progress(loader) if progress else loader:
                x, y = x.to(self.device), y.to(self.device)
                logits, aux = model(x)
                loss = F.cross_entropy(logits, y)
                if aux is not None and coef:
                    loss = loss + coef * aux
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        for p in self.net.pool.parameters():
            p.grad = None
        self.weight, self.bias = weight.detach().cpu(), bias.detach().cpu()
        self.counts = torch.cat([self.counts, distributed.all_sum(torch.bincount(labels - lo, minlength=hi - lo))])
        self.proto_sums = torch.cat([self.proto_sums, torch.zeros(hi - lo, dim, dtype=torch.float64)])
        if self.hp["head"] == "prototype":
            feats, ys = self.embed(loader)
            self.proto_sums += distributed.class_sums(feats, ys, hi)[0]  # summed over ranks
        self.num_classes = hi

    # ----------------------------------------------------------- inference
    def embedding_module(self) -> nn.Module:
        return self.net

    @property
    def embedding_frozen(self) -> bool:
        return False  # the prompt pool trains on every task

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        if self.hp["head"] == "linear":
            return emb @ self.weight.T + self.bias
        return F.normalize(emb, dim=1) @ F.normalize(self.prototypes, dim=1).T

    @property
    def prototypes(self) -> torch.Tensor:
        return (self.proto_sums / self.counts.clamp(min=1)[:, None]).float()

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        counts = self.counts.numpy().copy()
        if self.hp["head"] == "linear":
            return "linear", {"weight": self.weight.numpy().copy(), "bias": self.bias.numpy().copy(), "counts": counts}
        return "prototype_cosine", {"prototypes": self.prototypes.numpy(), "counts": counts}

    # --------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        pool = {f"pool.{k}": v.detach().cpu().numpy() for k, v in self.net.pool.state_dict().items()}
        return pool | {
            "tasks": np.array(self.tasks),
            "head.weight": self.weight.numpy(),
            "head.bias": self.bias.numpy(),
            "counts": self.counts.numpy(),
            "proto_sums": self.proto_sums.numpy(),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        tasks = int(state["tasks"])
        while self.tasks < tasks:
            self._grow()
        pool = {k[len("pool.") :]: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith("pool.")}
        try:
            self.net.pool.load_state_dict(pool, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"saved prompt pool does not fit {self.name} with {self.hp}: {exc}") from exc
        self.weight = torch.as_tensor(np.asarray(state["head.weight"]), dtype=torch.float32)
        self.bias = torch.as_tensor(np.asarray(state["head.bias"]), dtype=torch.float32)
        self.counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        self.proto_sums = torch.as_tensor(np.asarray(state["proto_sums"]), dtype=torch.float64)
        dim = self.backbone.embedding_dim
        n = self.counts.shape[0]
        if self.weight.shape != (n, dim) or self.bias.shape != (n,) or self.proto_sums.shape != (n, dim):
            raise ValueError(f"saved head shapes do not fit {n} classes of dimension {dim}")
        self.num_classes = n
