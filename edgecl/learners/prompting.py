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
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.linear import LinearHead
from edgecl_runtime.heads.prototype import PrototypeCosineHead

from .. import distributed
from ..errors import ConfigError, StateError
from ..loop import cosine_schedule, epochs, mask_logits, train
from ..peft.prompts import PromptedViT
from .hparams import ConfiguredLearner
from .labels import loader_labels, task_classes

HEADS = {"linear": LinearHead, "prototype": PrototypeCosineHead}
COMMON_DEFAULTS: dict[str, Any] = {"epochs": 3, "lr": 0.01, "head": "linear", "seed": 0}
COMMON_CHOICES: dict[str, tuple] = {"head": tuple(HEADS)}


def block_list(hp: dict[str, Any], key: str) -> list[int]:
    """A hyper-parameter naming ViT blocks, ``"2,3,4"``, as a list of ints (``ConfigError`` otherwise)."""
    try:
        blocks = [int(v) for v in str(hp[key]).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"hyper-parameter {key}={hp[key]!r} must be comma-separated block indices") from None
    if not blocks or len(set(blocks)) != len(blocks):
        raise ConfigError(f"hyper-parameter {key}={hp[key]!r} must name distinct blocks")
    return blocks


class TaskClassifier(nn.Module):
    """One task's training forward: prompted embedding, logits of classes ``lo..hi-1`` (earlier ones masked),
    and the pool's auxiliary loss (``None`` if it has none); one module, so DDP can wrap it."""

    def __init__(self, net: nn.Module, weight: nn.Parameter, bias: nn.Parameter, task: int, lo: int, hi: int):
        super().__init__()
        self.net, self.weight, self.bias, self.task, self.lo, self.hi = net, weight, bias, task, lo, hi

    def forward(self, x: torch.Tensor):
        emb, aux = self.net.encode(x, self.task)
        return mask_logits((emb @ self.weight.T + self.bias)[:, : self.hi], self.lo), aux


class PromptLearner(ConfiguredLearner):
    """Subclasses' ``defaults`` and ``choices`` start from ``COMMON_DEFAULTS`` / ``COMMON_CHOICES``."""

    positive: ClassVar[tuple[str, ...]] = ("epochs", "lr", "size", "length", "top_n", "g_length", "e_length", "per_task")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        hp = self.hp
        torch.manual_seed(hp["seed"])
        pool = self.make_pool(backbone.embedding_dim, hp)
        self.net = PromptedViT(self.backbone, pool, self.pool_mode(hp), method=self.name).to(device)
        dim = backbone.embedding_dim
        self.weight = torch.zeros(0, dim)
        self.bias = torch.zeros(0)
        self.counts = torch.zeros(0, dtype=torch.int64)
        self.protos = PrototypeCosineHead(np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
        self.tasks = 0

    @property
    def head_class(self) -> type:
        """``LinearHead`` or ``PrototypeCosineHead``, as the ``head`` hyper-parameter says."""
        return HEADS[self.hp["head"]]

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
        labels = torch.from_numpy(loader_labels(loader))
        _, new = task_classes(distributed.all_classes(labels.numpy()), self.num_classes, new_only=True)  # every rank
        lo, hi = self.num_classes, self.num_classes + len(new)
        torch.manual_seed(self.hp["seed"] + self.tasks)
        self._grow()
        weight, bias = self._train_task(loader, lo, hi, progress)
        self.weight, self.bias = weight.detach().cpu(), bias.detach().cpu()
        self.counts = torch.cat([self.counts, distributed.all_sum(torch.bincount(labels - lo, minlength=hi - lo))])
        if self.hp["head"] == "prototype":
            self._add_prototypes(loader, new)
        self.num_classes = hi

    def _add_prototypes(self, loader, new: list[int]) -> None:
        """Prototypes of the task's classes from the trained prompted embedding (class sums of every rank)."""
        feats, ys = self.embed(loader)
        if distributed.is_distributed():
            sums, k = distributed.class_sums(feats, ys, new[-1] + 1)  # summed over ranks
            for c in new:
                self.protos = self.protos.with_sum(None, sums[c].numpy(), int(k[c]))
            return
        feats, ys = feats.numpy(), ys.numpy()
        for c in new:
            self.protos = self.protos.with_examples(None, feats[ys == c])

    def _train_task(self, loader, lo: int, hi: int, progress) -> tuple[nn.Parameter, nn.Parameter]:
        """The pool's trainable parameters and the linear head (grown to ``hi`` classes) by cross-entropy
        on logits with the ``lo`` earlier classes masked, plus the pool's auxiliary loss."""
        task, dim = self.tasks - 1, self.weight.shape[1]
        new = nn.Linear(dim, hi - lo)
        weight = nn.Parameter(torch.cat([self.weight, new.weight.data]).to(self.device))
        bias = nn.Parameter(torch.cat([self.bias, new.bias.data]).to(self.device))
        params = [p for p in self.net.pool.parameters() if p.requires_grad] + [weight, bias]
        opt = torch.optim.Adam(params, lr=self.hp["lr"])
        steps = self.hp["epochs"] * max(1, len(loader) if hasattr(loader, "__len__") else 1)
        coef = float(self.hp.get(self.aux_coef_name, 0.0)) if self.aux_coef_name else 0.0
        model = distributed.data_parallel(TaskClassifier(self.net, weight, bias, task, lo, hi), loader)  # DDP if any

        def loss_fn(batch):
            x, y = batch[0].to(self.device), batch[1].to(self.device)
            logits, aux = model(x)
            loss = F.cross_entropy(logits, y)
            return loss + coef * aux if aux is not None and coef else loss

        train(epochs(loader, self.hp["epochs"], progress), loss_fn, opt, cosine_schedule(opt, steps))
        for p in self.net.pool.parameters():
            p.grad = None
        return weight, bias

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
        return torch.from_numpy(self.protos.scores(emb.numpy()))

    @property
    def prototypes(self) -> torch.Tensor:
        return torch.from_numpy(self.protos.prototypes.copy())

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        if self.hp["head"] == "linear":
            head = LinearHead(self.weight.numpy().copy(), self.bias.numpy().copy(), self.counts.numpy().copy())
        else:
            head = self.protos
        return head.kind, dict(head.arrays())

    # --------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        pool = {f"pool.{k}": v.detach().cpu().numpy() for k, v in self.net.pool.state_dict().items()}
        out = pool | {
            "tasks": np.array(self.tasks),
            "head.weight": self.weight.numpy(),
            "head.bias": self.bias.numpy(),
            "counts": self.counts.numpy(),
        }
        if self.hp["head"] == "prototype":
            out["prototypes"] = np.asarray(self.protos.prototypes)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        tasks = int(state["tasks"])
        while self.tasks < tasks:
            self._grow()
        pool = {k[len("pool.") :]: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith("pool.")}
        try:
            self.net.pool.load_state_dict(pool, strict=True)
        except RuntimeError as exc:
            raise StateError(f"saved prompt pool does not fit {self.name} with {self.hp}: {exc}") from exc
        self.weight = torch.as_tensor(np.asarray(state["head.weight"]), dtype=torch.float32)
        self.bias = torch.as_tensor(np.asarray(state["head.bias"]), dtype=torch.float32)
        self.counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        dim = self.backbone.embedding_dim
        n = self.counts.shape[0]
        if self.weight.shape != (n, dim) or self.bias.shape != (n,):
            raise StateError(f"saved head shapes do not fit {n} classes of dimension {dim}")
        self.protos = self._load_prototypes(state, n, dim)
        self.num_classes = n

    def _load_prototypes(self, state: dict[str, np.ndarray], n: int, dim: int) -> PrototypeCosineHead:
        """The prototype head of a saved state (``proto_sums`` of runs saved before ``prototypes``)."""
        counts = self.counts.numpy()
        if self.hp["head"] != "prototype":
            return PrototypeCosineHead(np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
        if "prototypes" in state:
            protos = np.asarray(state["prototypes"], dtype=np.float32)
        elif "proto_sums" in state:
            protos = (np.asarray(state["proto_sums"]) / np.maximum(counts, 1)[:, None]).astype(np.float32)
        else:
            raise StateError(f"{self.name} state with head=prototype has no prototypes")
        if protos.shape != (n, dim):
            raise StateError(f"saved prototypes {protos.shape} do not fit {n} classes of dimension {dim}")
        return PrototypeCosineHead(protos, counts.copy())
