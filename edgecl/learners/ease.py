"""EASE (Zhou et al., "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental Learning", 2024).

Each task trains one new light adapter (a subspace; earlier adapters stay
frozen) with a temporary cosine head over that task's classes. An image's
feature is the concatenation of its embeddings through every task adapter
(optionally preceded by the pre-trained embedding, hparam ``use_init_ptm``),
and every class is a prototype in that concatenated space, scored by cosine.

Old classes have no data when a new subspace appears, so their prototypes in
it are *complemented* by semantic similarity, as in the paper: for classes
``O`` of task ``i`` and a later subspace ``s``, with ``R`` the classes of
tasks ``>= s`` (which have real prototypes in both subspaces ``i`` and ``s``),

    P[O, s] = softmax_rows(cos(P[O, i], P[R, i])) @ P[R, s]

recomputed for every pair ``i < s`` after each task (the reference code's
``recalc_sim``).

Scoring (``reweight``, default on, the paper's and the reference code's
``use_reweight``): a class scores the sum over subspaces of per-subspace
cosines, weighted 1 in the subspace of its own task and ``alpha / (T - 1)``
in the other adapters' subspaces (``T`` tasks so far; ``beta`` for the
pre-trained block), because a complemented prototype is only an estimate.
That is the runtime's ``subspace_cosine`` head; a class added on the device
has real prototypes in every subspace, like the newest task's classes, and
gets their weights. ``reweight=false`` scores plain cosine over the whole
concatenation (``prototype_cosine``), which lets later classes, real in every
subspace, outscore old ones (benchmarks/results/ease-glyphs200-vit-plain.md).

The exported graph carries all adapters as parallel branches over one shared
patch embedding (``edgecl.peft.ParallelEmbedding``). Needs a ViT.

Hyper-parameters: ``bottleneck`` (16) and ``scale`` (0.1) of each adapter,
``use_init_ptm`` (false), ``reweight`` (true), ``alpha`` (0.1), ``beta`` (0.0),
``epochs`` (5) and ``lr`` (1e-3) per task,
``weight_decay``, ``head``, ``seed`` (see ``aper``).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.prototype import PrototypeCosineHead
from edgecl_runtime.heads.subspace import SubspaceCosineHead

from ..errors import NotTrainedError, StateError
from ..peft import ParallelEmbedding, PeftModel
from .aper import TRAIN_DEFAULTS
from .hparams import require
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import HEAD_TYPES, fit_classifier, task_labels

_ADAPTER_KEY = re.compile(r"^adapter(\d+)\.(.+)$")


def complement(means: torch.Tensor, task_of_class: torch.Tensor, dim: int, offset: int = 0) -> torch.Tensor:
    """Old classes' prototypes in later subspaces by semantic similarity (see module doc); a new tensor.

    ``means`` is ``(C, (offset + T) * dim)``: subspace ``j`` occupies columns
    ``(offset + j) * dim`` to ``(offset + j + 1) * dim``.
    """
    out = means.clone()
    tasks = int(task_of_class.max()) + 1 if len(task_of_class) else 0

    def block(j: int) -> slice:
        return slice((offset + j) * dim, (offset + j + 1) * dim)

    for i in range(tasks):
        old = task_of_class == i
        for s in range(i + 1, tasks):
            ref = task_of_class >= s
            sim = F.normalize(means[old][:, block(i)], dim=1) @ F.normalize(means[ref][:, block(i)], dim=1).T
            out[torch.nonzero(old).flatten(), block(s)] = sim.softmax(dim=1) @ means[ref][:, block(s)]
    return out


def subspace_weights(task_of_class: torch.Tensor, tasks: int, alpha: float, beta: float, offset: int) -> torch.Tensor:
    """``(C + 1, offset + tasks)`` weight of each class's cosine in each subspace; the last row is
    for a class added later on the device (weighted as the newest task's classes).

    Own task's subspace 1, other adapters' ``alpha / max(tasks - 1, 1)``, the
    pre-trained block (``offset=1``) ``beta``: the reference code's ``forward_reweight``.
    """
    rows = torch.cat([task_of_class, torch.tensor([tasks - 1])])
    w = torch.full((len(rows), offset + tasks), alpha / max(tasks - 1, 1), dtype=torch.float64)
    w[torch.arange(len(rows)), offset + rows] = 1.0
    if offset:
        w[:, 0] = beta
    return w


@register_learner
class EASE(PrototypeLearner):
    name = "ease"
    defaults = {
        "bottleneck": 16, "scale": 0.1, "use_init_ptm": False, "reweight": True, "alpha": 0.1, "beta": 0.0,
        **TRAIN_DEFAULTS,
    }  # fmt: skip
    choices = {"head": HEAD_TYPES}
    positive = ("epochs", "lr", "bottleneck")

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, hp["alpha"] >= 0 and hp["beta"] >= 0,
                f"alpha and beta must be >= 0, got {hp['alpha']} and {hp['beta']}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.adapters: list[PeftModel] = []
        self.task_of_class = torch.zeros(0, dtype=torch.int64)
        self._embedding: nn.Module | None = None
        self.train_stats: dict[str, float] | None = None  # last epoch of the latest adapter's training

    @property
    def offset(self) -> int:
        return int(self.hparams["use_init_ptm"])

    @property
    def head_kind(self) -> str:
        """What the bundle gets: the subspace head (``reweight``) or the prototype head it trains."""
        return (SubspaceCosineHead if self.hparams["reweight"] else PrototypeCosineHead).kind

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim * (self.offset + len(self.adapters))

    def embedding_module(self) -> nn.Module:
        if self._embedding is None:
            raise NotTrainedError("ease has no embedding before its first task")
        return self._embedding

    def _new_adapter(self) -> PeftModel:
        hp = self.hparams
        seed = hp["seed"] + len(self.adapters)
        return PeftModel(self.backbone.model, "adapter", bottleneck=hp["bottleneck"], scale=hp["scale"], seed=seed).to(self.device)

    def _set_adapters(self, adapters: list[PeftModel]) -> None:
        self.adapters = adapters
        self._embedding = ParallelEmbedding(self.backbone.model, adapters, include_base=bool(self.offset))

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes, new_only=True)  # a new subspace per task: new classes only
        hp, dim = self.hparams, self.backbone.embedding_dim
        adapter = self._new_adapter()
        self.train_stats = fit_classifier(
            adapter, adapter.peft_parameters(), loader, classes, dim,
            epochs=hp["epochs"], lr=hp["lr"], weight_decay=hp["weight_decay"], head=hp["head"],
            device=self.device, seed=hp["seed"] + len(self.adapters), progress=progress,
        )  # fmt: skip
        adapter.freeze()
        self._set_adapters([*self.adapters, adapter])
        if self.num_classes:  # the new subspace's block, complemented below
            self.set_prototypes(np.hstack([self.head.prototypes, np.zeros((self.num_classes, dim), np.float32)]))
        feats, labels = self.embed(loader)
        new = self.add_examples(feats, labels)
        task = len(self.adapters) - 1
        self.task_of_class = torch.cat([self.task_of_class, torch.full((len(new),), task, dtype=torch.int64)])
        means = complement(self.prototypes.double(), self.task_of_class, dim, self.offset)
        self.set_prototypes(means.float().numpy())

    def _weights(self) -> torch.Tensor:
        hp = self.hparams
        return subspace_weights(self.task_of_class, len(self.adapters), hp["alpha"], hp["beta"], self.offset)

    @property
    def embedding_frozen(self) -> bool:
        return False  # a new adapter (subspace) every task

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.hparams["reweight"]:
            return super().scores(feats)
        _, arrays = self.export_head()  # the exported head scores here too
        return torch.from_numpy(SubspaceCosineHead(**arrays).scores(feats.numpy()))

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        _, arrays = super().export_head()
        arrays = dict(arrays)
        if self.hparams["reweight"]:
            w = self._weights().float().numpy()
            arrays.update(weights=w[:-1].copy(), new_class_weights=w[-1].copy())
        return self.head_kind, arrays

    def extra_state(self) -> dict[str, np.ndarray]:
        out = {"task_of_class": self.task_of_class.numpy().copy()}
        for k, adapter in enumerate(self.adapters):
            out.update({f"adapter{k}.{n}": v.numpy() for n, v in adapter.peft_state().items()})
        return out

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        per: dict[int, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            m = _ADAPTER_KEY.match(key)
            if m:
                per.setdefault(int(m.group(1)), {})[m.group(2)] = value
        if sorted(per) != list(range(len(per))):
            raise StateError(f"ease state has adapters {sorted(per)}, expected 0..{len(per) - 1}")
        task_of_class = torch.as_tensor(np.asarray(state["task_of_class"]), dtype=torch.int64)
        if task_of_class.shape != np.shape(state["prototypes"])[:1] or (len(per) == 0 and len(task_of_class)):
            raise StateError(f"ease state: task_of_class {tuple(task_of_class.shape)} does not fit the prototypes")
        adapters = []
        for k in range(len(per)):
            self.adapters = adapters  # seeds follow the adapter index
            adapter = self._new_adapter()
            adapter.load_peft_state(per[k])
            adapters.append(adapter.freeze())
        self._set_adapters(adapters)
        self.task_of_class = task_of_class
