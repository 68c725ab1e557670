"""ESN (Wang et al., "Isolation and Impartial Aggregation", AAAI 2023): a component per task, energy-voted.

The paper: "Isolation and Impartial Aggregation: A Paradigm of Incremental
Learning without Interference" (reference code: iamwangyabin/ESN).

Every task gets its own component on the frozen ViT and nothing is shared
between tasks (isolation): a task token, a class-attention block over the
frozen model's output tokens (timm's CaiT ``LayerScaleBlockClassAttn``, as
the reference code's ConViT class-attention block) and a linear classifier
over the task's classes. The frozen ViT runs once per image; the components
are parallel branches over its tokens.

Impartial aggregation: which task an image belongs to is inferred from the
components' *energies*, ``E_t(x) = -log sum_c exp(f_t(x)_c)``. Trained
separately, components would not have comparable energies, so each is trained
with the anchor-based self-normalisation of the paper,

    loss = CE(f_t(x), y) + lam * (E_t(x; beta) - anchor)^2,
    E_t(x; beta) = -(1 / beta) log sum_c exp(beta f_t(x)_c),

which pulls every component's energy on its own data to the same anchor.
At inference each temperature ``tau`` of a set votes for the task with the
largest ``logsumexp(f_t(x) / tau)`` and the majority wins (ties: the earliest
task). The set has one temperature per task: after training task ``t``, the
candidate (``0.001, 0.01, 0.1 .. 1.0``) that best picks task ``t`` for the
task's own training images (the reference code's selection; ``0.001`` for
the first task); the votes use its distinct values.

Departure for on-device learning (docs/mixtures.md): the paper classifies
within the chosen task with that task's linear classifier, which cannot
learn a new class without data of its task. Here the embedding is the
*gated* concatenation of the components' normalised features,
``[g_0 u_0, ..., g_{T-1} u_{T-1}]`` with ``u_t`` the unit feature of
component ``t`` and ``g`` the one-hot of the voted task, and classes are
cosine prototypes of it (``prototype_cosine``): a class competes only inside
the task its images are routed to, and a class added on the device gets the
mean of its images' gated features, routed by the same vote. Energies,
temperatures and the vote all run inside the exported graph (over one ViT
pass); only the prototypes are head state. The trained classifiers still
drive training and the energies; ``paper_logits`` is the paper's prediction
(the chosen task's classifier) for comparison.

Hyper-parameters: ``lam`` (0.1) and ``anchor`` (-10) of the energy
alignment, ``energy_beta`` (1), ``mlp_ratio`` (0.5) of the class-attention
block, ``epochs`` (3), ``lr`` (1e-3, AdamW, cosine), ``weight_decay`` (5e-4),
``seed`` (0). Needs a ViT.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._compat import import_timm
from ..errors import NotTrainedError, StateError
from ..loop import cosine_schedule, epochs, steps_per_epoch, train
from ..peft.base import require_vit, vit_tokens
from .hparams import require
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import task_labels

CANDIDATE_TEMPERATURES = (0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FIRST_TEMPERATURE = 0.001
_COMPONENT_KEY = re.compile(r"^component(\d+)\.(.+)$")


def energy(logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Free energy ``-(1/beta) logsumexp(beta * logits)`` of each row ``(N, C) -> (N,)``."""
    return -torch.logsumexp(beta * logits, dim=1) / beta


def vote(logits: list[torch.Tensor], temperatures: torch.Tensor) -> torch.Tensor:
    """The task each image is routed to: each temperature votes for ``argmax_t logsumexp(logits[t] / tau)``,
    the most votes win, ties go to the earliest task. ``logits[t]`` is ``(N, C_t)``; returns ``(N,)`` int64."""
    tasks = torch.arange(len(logits), device=logits[0].device)
    counts = torch.zeros(logits[0].shape[0], len(logits), device=logits[0].device)
    for tau in temperatures:
        scores = torch.stack([torch.logsumexp(lg / tau, dim=1) for lg in logits], dim=1)  # (N, T)
        counts = counts + (scores.argmax(dim=1, keepdim=True) == tasks).float()
    return counts.argmax(dim=1)


class TaskComponent(nn.Module):
    """One task's component: task token -> class attention over the frozen tokens -> norm -> classifier."""

    def __init__(self, dim: int, heads: int, classes: int, token: torch.Tensor, mlp_ratio: float):
        super().__init__()
        cait = import_timm().models.cait
        self.token = nn.Parameter(token.detach().clone().reshape(1, 1, dim))
        self.block = cait.LayerScaleBlockClassAttn(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, init_values=1.0)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen output tokens ``(N, L, D)`` -> the component's feature ``(N, D)`` and logits ``(N, C_t)``."""
        feat = self.norm(self.block(tokens, self.token.expand(tokens.shape[0], -1, -1))[:, 0])
        return feat, self.fc(feat)


class ESNEmbedding(nn.Module):
    """Images -> gated concatenation of the components' unit features (see module doc): one ViT pass,
    the components as parallel branches, the vote inside."""

    def __init__(self, vit: nn.Module, components: list[TaskComponent], temperatures: list[float]):
        super().__init__()
        self.vit, self.components = vit, nn.ModuleList(components)
        self.register_buffer("temperatures", torch.tensor(sorted(set(temperatures)), dtype=torch.float32))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen ViT's output tokens (before its final norm, as the reference code)."""
        return self.vit.blocks(vit_tokens(self.vit, x))

    def branches(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tokens = self.tokens(x)
        outs = [c(tokens) for c in self.components]
        return [f for f, _ in outs], [lg for _, lg in outs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, logits = self.branches(x)
        task = vote(logits, self.temperatures)
        gate = (task[:, None] == torch.arange(len(feats), device=x.device)).to(x.dtype)  # (N, T) one-hot
        unit = torch.stack([F.normalize(f, dim=1) for f in feats], dim=1)  # (N, T, D)
        return (unit * gate[:, :, None]).flatten(1)


@register_learner
class ESN(PrototypeLearner):
    name = "esn"
    defaults: ClassVar[dict[str, Any]] = {
        "lam": 0.1, "anchor": -10.0, "energy_beta": 1.0, "mlp_ratio": 0.5,
        "epochs": 3, "lr": 1e-3, "weight_decay": 5e-4, "seed": 0,
    }  # fmt: skip
    positive = ("epochs", "lr", "energy_beta", "mlp_ratio")
    hparam_help: ClassVar[dict[str, str]] = {
        "lam": "weight of the energy alignment loss (lam * (E - anchor)^2)",
        "anchor": "the anchor energy every task component is pulled to on its own data",
        "energy_beta": "inverse temperature of the energy in the alignment loss",
        "mlp_ratio": "MLP width ratio of each task's class-attention block",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, hp["lam"] >= 0, f"lam must be >= 0, got {hp['lam']}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        require_vit(self.backbone.model, "esn")
        self.components: list[TaskComponent] = []
        self.temperatures: list[float] = []
        self.task_of_class = torch.zeros(0, dtype=torch.int64)
        self._embedding: ESNEmbedding | None = None
        self.train_stats: dict[str, float] | None = None

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim * len(self.components)

    def embedding_module(self) -> nn.Module:
        if self._embedding is None:
            raise NotTrainedError("esn has no embedding before its first task")
        return self._embedding

    @property
    def embedding_frozen(self) -> bool:
        return False  # a new component (and temperature) every task

    def _new_component(self, classes: int) -> TaskComponent:
        vit = self.backbone.model
        torch.manual_seed(self.hp["seed"] + len(self.components))
        heads = vit.blocks[0].attn.num_heads
        return TaskComponent(vit.embed_dim, heads, classes, vit.cls_token, self.hp["mlp_ratio"]).to(self.device)

    def _set(self, components: list[TaskComponent], temperatures: list[float]) -> None:
        for c in components:
            c.requires_grad_(False).eval()
        self.components, self.temperatures = components, temperatures
        self._embedding = ESNEmbedding(self.backbone.model, components, temperatures).eval()

    # ------------------------------------------------------------ training
    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes, new_only=True)
        component = self._new_component(len(classes))
        self._train_component(component, loader, int(classes[0]), progress)
        self._set([*self.components, component], [*self.temperatures, FIRST_TEMPERATURE])
        if len(self.components) > 1:
            self._set(self.components, [*self.temperatures[:-1], self.select_temperature(loader)])
        if self.num_classes:  # the new component's block: zero for the old classes' prototypes
            pad = np.zeros((self.num_classes, self.backbone.embedding_dim), np.float32)
            self.set_prototypes(np.hstack([self.head.prototypes, pad]))
        feats, labels = self.embed(loader)
        new = self.add_examples(feats, labels)
        task = len(self.components) - 1
        self.task_of_class = torch.cat([self.task_of_class, torch.full((len(new),), task, dtype=torch.int64)])

    def _train_component(self, component: TaskComponent, loader, lo: int, progress) -> None:
        """Cross-entropy on the task's classes plus the energy alignment to the anchor (see module doc)."""
        hp, vit = self.hp, self.backbone.model
        opt = torch.optim.AdamW(component.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        sched = cosine_schedule(opt, max(1, hp["epochs"] * (steps_per_epoch(loader) or 1)))
        tally = {"loss": 0.0, "align": 0.0, "n": 0}

        def loss_fn(batch):
            x, y = batch[0].to(self.device), (batch[1] - lo).to(self.device)
            with torch.no_grad():
                tokens = vit.blocks(vit_tokens(vit, x))
            _, logits = component(tokens)
            align = ((energy(logits, hp["energy_beta"]) - hp["anchor"]) ** 2).mean()
            loss = F.cross_entropy(logits, y) + hp["lam"] * align
            tally.update(loss=loss.item(), align=align.item(), n=tally["n"] + 1)
            return loss

        component.train()
        train(epochs(loader, hp["epochs"], progress), loss_fn, opt, sched)
        self.train_stats = {"loss": tally["loss"], "energy_alignment": tally["align"]}

    @torch.no_grad()
    def task_energies(self, loader, temperatures=CANDIDATE_TEMPERATURES) -> dict[float, torch.Tensor]:
        """``{tau: (N, T) logsumexp(f_t(x) / tau)}`` of every component on ``loader``'s images."""
        out: dict[float, list[torch.Tensor]] = {t: [] for t in temperatures}
        for batch in loader:
            _, logits = self.embedding_module().branches(batch[0].to(self.device))
            for t in temperatures:
                out[t].append(torch.stack([torch.logsumexp(lg / t, dim=1) for lg in logits], dim=1).cpu())
        return {t: torch.cat(v) for t, v in out.items()}

    def select_temperature(self, loader) -> float:
        """The candidate temperature whose energies best pick the newest task for its own training images."""
        task = len(self.components) - 1
        scores = self.task_energies(loader)
        accuracy = [float((scores[t].argmax(dim=1) == task).float().mean()) for t in CANDIDATE_TEMPERATURES]
        return CANDIDATE_TEMPERATURES[int(np.argmax(accuracy))]

    # ----------------------------------------------------------- inference
    @torch.no_grad()
    def routed_tasks(self, x: torch.Tensor) -> torch.Tensor:
        """The task each image is routed to by the energy vote."""
        emb = self.embedding_module()
        return vote(emb.branches(x.to(self.device))[1], emb.temperatures).cpu()

    @torch.no_grad()
    def paper_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's prediction scores: the routed task's classifier logits in its classes, ``-inf`` elsewhere
        (classes the device added are not in them)."""
        emb = self.embedding_module()
        _, logits = emb.branches(x.to(self.device))
        task = vote(logits, emb.temperatures).cpu()
        out = torch.full((x.shape[0], len(self.task_of_class)), -torch.inf)
        for t, lg in enumerate(logits):
            rows, cols = (task == t).nonzero().flatten(), (self.task_of_class == t).nonzero().flatten()
            out[rows[:, None], cols[None, :]] = lg.cpu()[rows]
        return out

    # --------------------------------------------------------------- state
    def extra_state(self) -> dict[str, np.ndarray]:
        out = {"task_of_class": self.task_of_class.numpy().copy(),
               "temperatures": np.asarray(self.temperatures, np.float64)}
        for k, c in enumerate(self.components):
            out.update({f"component{k}.{n}": v.detach().cpu().numpy() for n, v in c.state_dict().items()})
        return out

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        per: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            m = _COMPONENT_KEY.match(key)
            if m:
                per.setdefault(int(m.group(1)), {})[m.group(2)] = torch.as_tensor(np.asarray(value))
        task_of_class = torch.as_tensor(np.asarray(state["task_of_class"]), dtype=torch.int64)
        temperatures = [float(t) for t in np.asarray(state["temperatures"])]
        sizes = torch.bincount(task_of_class, minlength=len(per)).tolist() if len(task_of_class) else []
        if sorted(per) != list(range(len(per))) or len(sizes) != len(per) or len(temperatures) != len(per):
            raise StateError(f"esn state: components {sorted(per)}, {len(temperatures)} temperatures and "
                             f"task_of_class do not fit each other")
        components = [self._new_component(n) for n in sizes]
        for k, c in enumerate(components):
            try:
                c.load_state_dict(per[k], strict=True)
            except RuntimeError as exc:
                raise StateError(f"esn component {k} does not fit: {exc}") from exc
        self._set(components, temperatures)
        self.task_of_class = task_of_class
