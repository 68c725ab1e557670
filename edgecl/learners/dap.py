"""DAP (Jung et al., "Generating Instance-level Prompts for Rehearsal-free Continual Learning", ICCV 2023).

Instead of selecting prompts from a pool, DAP *generates* a prompt for every
image. Here the generator is a small MLP on the frozen ViT's [CLS] query ``q``
(the query pass every prompt learner makes, ``edgecl.peft.prompts.PromptedViT``):

    g(q)    = W2 gelu(W1 LayerNorm(q))                 reshaped to (length, D)
    prompt  = (1 + gamma_t) * g(q) + beta_t            gamma_t, beta_t = FiLM(e_t)

``e_t`` is a learned task embedding, chosen by the paper's key matching: task
``t`` has a key ``k_t``; in training the task's own key is used and pulled to
the queries (``pull * (1 - cos(q, k_t))``), at inference the key most
cosine-similar to ``q`` (``argmax``). The generator and the FiLM layer are
shared by all tasks; with ``shared=continual`` (the paper) they keep training on every task, with
``shared=first`` (the default) they are frozen after the first task, so the prompts of earlier tasks'
images, and with them their prototypes, stay fixed (measured: docs/mixtures.md); old keys and task
embeddings are always frozen.
The prompt tokens are inserted after [CLS] before the first block
(prompt-tuning, as L2P inserts its tokens) and the embedding is the prompted
[CLS]; the whole generator runs inside the exported graph.

Departures from the paper (see docs/mixtures.md): the paper's generator maps
the (layer-normalised) *token sequence* of every block to its prompt tokens
with a linear map along the token axis, in every block; here an MLP maps the
[CLS] query to tokens inserted once (what the issue names "prompts generated
by a small MLP from the query feature"); the FiLM is ``(1 + gamma) g + beta``
with zero initialisation instead of the paper's norm-divided ``gamma``,
``beta``; no batch-level majority vote of the task key (each image picks its
own, as the other prompt learners here do). The default head is
``prototype`` (class means of the prompted embedding), so the device adds
classes; ``head=linear`` keeps the trained classifier.

Hyper-parameters: ``length`` (5) prompt tokens, ``hidden`` (64) MLP width,
``task_dim`` (16) task-embedding size, ``pull`` (0.1), ``shared`` (first), ``head`` (prototype),
``epochs`` (3), ``lr`` (0.01), ``seed`` (0).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..peft.prompts import Prompts, cosine
from .hparams import require
from .prompting import COMMON_CHOICES, COMMON_DEFAULTS, PromptLearner
from .registry import register_learner

SHARED = ("continual", "first")  # when the shared generator and FiLM layer train


class PromptGenerator(nn.Module):
    """The instance-level prompt generator (see module doc): ``q (B, D) -> Prompts(insert=(B, length, D))``."""

    def __init__(self, dim: int, length: int = 5, hidden: int = 64, task_dim: int = 16, shared: str = "continual"):
        super().__init__()
        if shared not in SHARED:
            raise ValueError(f"shared must be one of {', '.join(SHARED)}, got {shared!r}")
        self.dim, self.length, self.task_dim, self.shared = dim, length, task_dim, shared
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, length * dim))
        self.film = nn.Linear(task_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.keys = nn.ParameterList()
        self.task_embeddings = nn.ParameterList()

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    def add_task(self) -> None:
        """A key and a task embedding for the next task; earlier ones are frozen, and with ``shared="first"``
        the generator and the FiLM layer too after the first task."""
        frozen = list(self.keys) + list(self.task_embeddings)
        if self.shared == "first" and self.num_tasks:
            frozen += [*self.norm.parameters(), *self.mlp.parameters(), *self.film.parameters()]
        for p in frozen:
            p.requires_grad_(False)
        self.keys.append(nn.Parameter(torch.empty(self.dim).uniform_(-1, 1)))
        self.task_embeddings.append(nn.Parameter(torch.randn(self.task_dim)))

    def generate(self, q: torch.Tensor) -> torch.Tensor:
        """``g(q)``: the MLP's instance-level tokens ``(B, length, D)`` before the task modulation."""
        return self.mlp(self.norm(q)).reshape(q.shape[0], self.length, self.dim)

    def forward(self, q: torch.Tensor, task: int | None = None) -> Prompts:
        if self.num_tasks == 0:
            raise RuntimeError("PromptGenerator has no task yet (call add_task)")
        keys = torch.stack(list(self.keys))
        if task is None:
            idx = cosine(q, keys).argmax(dim=1)
            aux = None
        else:
            idx = torch.full((q.shape[0],), task, dtype=torch.long, device=q.device)
            aux = 1.0 - cosine(q, keys[task : task + 1]).mean()
        film = self.film(torch.stack(list(self.task_embeddings))[idx])  # (B, 2D): Gather
        gamma, beta = film[:, : self.dim, None].transpose(1, 2), film[:, self.dim :, None].transpose(1, 2)
        return Prompts(insert=(1.0 + gamma) * self.generate(q) + beta, aux_loss=aux)


@register_learner
class DAP(PromptLearner):
    name = "dap"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "head": "prototype", "length": 5, "hidden": 64, "task_dim": 16, "pull": 0.1,
        "shared": "first",
    }  # fmt: skip
    choices: ClassVar[dict[str, tuple]] = {**COMMON_CHOICES, "shared": SHARED}
    positive: ClassVar[tuple[str, ...]] = (*PromptLearner.positive, "hidden", "task_dim")
    aux_coef_name = "pull"
    hparam_help: ClassVar[dict[str, str]] = {
        "head": "prototype: cosine prototypes of the prompted embedding (device classes); linear: the trained head",
        "length": "prompt tokens generated per image",
        "hidden": "hidden width of the prompt-generating MLP",
        "task_dim": "size of the task embedding that modulates the generated prompt (FiLM)",
        "pull": "weight of the loss pulling the task's key to the queries",
        "shared": "continual: the generator and FiLM layer train on every task (the paper); first: on the first "
                  "task only (the prompts of earlier tasks, and so their prototypes, stay fixed)",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, hp["pull"] >= 0, f"pull must be >= 0, got {hp['pull']}")

    def make_pool(self, dim: int, hp: dict[str, Any]) -> nn.Module:
        return PromptGenerator(dim, hp["length"], hp["hidden"], hp["task_dim"], shared=hp["shared"])
