"""LAE (Gao et al., "A Unified Continual Learning Framework with General Parameter-Efficient Tuning", ICCV 2023).

**Learning.** One *online* PET module (hparam ``pet``: ``adapter``, ``ssf``,
``vpt_shallow`` or ``vpt_deep``, edgecl's PEFT modules) on the frozen backbone
and a linear head that grows by the classes of each task are trained with
cross-entropy on the task's new classes, earlier classes' logits masked
(``edgecl.loop.mask_logits``, the reference code's ``output[:, num_old:]``).
Calibrated speed: from the second task on, the PET module stays frozen for the
first ``freeze_epochs`` epochs, so the new (random) head rows adapt to the
module before the module moves (the reference code's ``num_freeze_epochs``).
Adam, cosine decay (``edgecl.loop.train``).

**Accumulation.** The *offline* module is a copy of the online one after the
first task and from then on its exponential moving average after every
optimizer step: ``off <- d * off + (1 - d) * on`` with ``d = ema_decay``.

**Ensemble, and the device.** Both experts (backbone + online module, backbone
+ offline module) run as two branches of one graph over the shared frozen
trunk (``edgecl.peft.ParallelEmbedding``: one patch embedding for adapter and
VPT). Departure from the paper, for on-device learning: classes are scored by
prototypes in both experts' spaces, ``cos(f_on, p_on) + cos(f_off, p_off)``
(the runtime's ``subspace_cosine`` head with unit weights), not by the max of
the two experts' softmaxed linear logits. A linear head cannot learn a class
from images on the device, and a max of two experts is no head kind the
runtimes have; the sum of cosines is, and a class added on the device gets real
prototypes in both experts. The trained linear head still drives the learning
(it is kept in the state). Prototypes of earlier tasks are not recomputed when
later tasks move the modules (no old data is kept), so they can drift.

**Folding.** With ``fold=true`` (``pet=ssf`` only) each expert's SSF scales and
shifts are folded into a copy of the backbone's weights (``edgecl.peft.fold``)
before scoring and export: two plain networks side by side, no Mul/Add per
layer, twice the frozen weights in the file. Adapters (a ReLU between their
projections) and prompts (extra tokens) do not fold.

Hyper-parameters: ``pet`` (adapter), ``bottleneck`` (16), ``scale`` (0.1),
``prompt_length`` (5), ``epochs`` (5), ``lr`` (1e-3), ``weight_decay`` (0.0),
``freeze_epochs`` (1), ``ema_decay`` (0.995), ``fold`` (false), ``seed`` (0).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.subspace import SubspaceCosineHead

from ..errors import StateError
from ..loop import cosine_schedule, epochs, mask_logits, steps_per_epoch, train
from ..peft import PEFT_METHODS, FoldedExperts, ParallelEmbedding, PeftModel, fold_peft, fold_reason
from .hparams import require
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import task_labels


@torch.no_grad()
def ema_update(offline: PeftModel, online: PeftModel, decay: float) -> None:
    """``off <- decay * off + (1 - decay) * on`` for every PEFT parameter (in place)."""
    on = online.peft_named_parameters()
    for name, p in offline.peft_named_parameters().items():
        p.mul_(decay).add_(on[name].detach(), alpha=1.0 - decay)


class MaskedLogits(nn.Module):
    """Training forward of one task: the online expert's logits over classes ``< hi``, those ``< lo`` masked."""

    def __init__(self, net: nn.Module, weight: nn.Parameter, bias: nn.Parameter, lo: int, hi: int):
        super().__init__()
        self.net, self.weight, self.bias, self.lo, self.hi = net, weight, bias, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_logits((self.net(x) @ self.weight.T + self.bias)[:, : self.hi], self.lo)


@register_learner
class LAE(PrototypeLearner):
    name = "lae"
    defaults = {
        "pet": "adapter", "bottleneck": 16, "scale": 0.1, "prompt_length": 5, "epochs": 5, "lr": 1e-3,
        "weight_decay": 0.0, "freeze_epochs": 1, "ema_decay": 0.995, "fold": False, "seed": 0,
    }  # fmt: skip
    choices = {"pet": PEFT_METHODS}
    positive = ("epochs", "lr", "bottleneck", "prompt_length")
    hparam_help = {
        "pet": "the online/offline PET module: adapter, ssf, vpt_shallow or vpt_deep",
        "freeze_epochs": "calibrated speed: epochs of each later task that train only the new head rows, "
                         "the online module frozen",
        "ema_decay": "offline module = EMA of the online one, decay per optimizer step",
        "fold": "fold the experts' SSF into copies of the backbone's weights for scoring and export (pet=ssf)",
        "lr": "peak learning rate of the online module and the linear head (Adam, cosine decay)",
        "weight_decay": "weight decay (Adam)",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, 0.0 <= hp["ema_decay"] < 1.0, f"ema_decay must lie in [0, 1), got {hp['ema_decay']}")
        require(self.name, 0 <= hp["freeze_epochs"] <= hp["epochs"],
                f"freeze_epochs must lie in 0..epochs={hp['epochs']}, got {hp['freeze_epochs']}")
        require(self.name, hp["weight_decay"] >= 0, "weight_decay must be >= 0")
        reason = fold_reason(hp["pet"])
        require(self.name, not hp["fold"] or reason is None, f"fold=true needs pet=ssf: {reason}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.online, self.offline = self._pet(), self._pet().freeze()  # same seed: equal at the start
        dim = self.backbone.embedding_dim
        self.weight, self.bias = torch.zeros(0, dim), torch.zeros(0)  # the linear head that drives learning
        self.tasks = 0
        self._embedding: nn.Module | None = None

    def _pet(self) -> PeftModel:
        hp = self.hp
        return PeftModel(self.backbone.model, hp["pet"], bottleneck=hp["bottleneck"], scale=hp["scale"],
                         prompt_length=hp["prompt_length"], seed=hp["seed"]).to(self.device)

    # ------------------------------------------------------------ embedding
    @property
    def embedding_dim(self) -> int:
        return 2 * self.backbone.embedding_dim

    @property
    def embedding_frozen(self) -> bool:
        return False  # both modules move every task

    def embedding_module(self) -> nn.Module:
        """``[online expert | offline expert]`` embeddings in one graph (folded copies with ``fold``)."""
        if self._embedding is None:
            if self.hp["fold"]:
                self._embedding = FoldedExperts([fold_peft(self.online), fold_peft(self.offline)])
            else:
                self._embedding = ParallelEmbedding(self.backbone.model, [self.online, self.offline], include_base=False)
        return self._embedding

    # ------------------------------------------------------------ training
    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes, new_only=True)
        lo, hi = self.num_classes, self.num_classes + len(classes)
        self._learn(loader, lo, hi, progress)
        if self.tasks == 0:  # accumulation starts from the first task's module
            self.offline.load_peft_state(self.online.peft_state())
        self.tasks += 1
        self._embedding = None
        feats, labels = self.embed(loader)
        self.add_examples(feats, labels)

    def _learn(self, loader, lo: int, hi: int, progress) -> None:
        """The online module and the head rows ``lo..hi-1`` by cross-entropy on masked logits; the offline
        module follows by EMA after every step (from the second task on)."""
        hp = self.hp
        torch.manual_seed(hp["seed"] + self.tasks)
        new = nn.Linear(self.backbone.embedding_dim, hi - lo)
        weight = nn.Parameter(torch.cat([self.weight, new.weight.data]).to(self.device))
        bias = nn.Parameter(torch.cat([self.bias, new.bias.data]).to(self.device))
        pet = self.online.peft_parameters()
        opt = torch.optim.Adam([*pet, weight, bias], lr=hp["lr"], weight_decay=hp["weight_decay"])
        sched = cosine_schedule(opt, max(1, hp["epochs"] * (steps_per_epoch(loader) or 1)))
        model = MaskedLogits(self.online, weight, bias, lo, hi)

        def loss_fn(batch):
            return F.cross_entropy(model(batch[0].to(self.device)), batch[1].to(self.device))

        on_step = (lambda _: ema_update(self.offline, self.online, hp["ema_decay"])) if self.tasks else None
        frozen = hp["freeze_epochs"] if self.tasks else 0
        for trainable, n in ((False, frozen), (True, hp["epochs"] - frozen)):
            for p in pet:
                p.requires_grad_(trainable)
            train(epochs(loader, n, progress), loss_fn, opt, sched, on_step=on_step)
        self.online.freeze()
        self.weight, self.bias = weight.detach().cpu(), bias.detach().cpu()

    # ----------------------------------------------------------- inference
    @property
    def head_kind(self) -> str:
        return SubspaceCosineHead.kind

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        _, arrays = self.export_head()  # the exported head scores here too
        return torch.from_numpy(SubspaceCosineHead(**arrays).scores(feats.numpy()))

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        """``subspace_cosine``: the prototypes in both experts' spaces, every class weighing both cosines 1."""
        _, arrays = super().export_head()
        ones = np.ones((self.num_classes, 2), np.float32)
        return self.head_kind, {**arrays, "weights": ones, "new_class_weights": np.ones(2, np.float32)}

    # --------------------------------------------------------------- state
    def extra_state(self) -> dict[str, np.ndarray]:
        out = {"tasks": np.array(self.tasks), "head.weight": self.weight.numpy(), "head.bias": self.bias.numpy()}
        for prefix, pet in (("online.", self.online), ("offline.", self.offline)):
            out.update({prefix + k: v.numpy() for k, v in pet.peft_state().items()})
        return out

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        for prefix, pet in (("online.", self.online), ("offline.", self.offline)):
            pet.load_peft_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            pet.freeze()
        weight = torch.as_tensor(np.asarray(state["head.weight"]), dtype=torch.float32)
        bias = torch.as_tensor(np.asarray(state["head.bias"]), dtype=torch.float32)
        n = np.shape(state["counts"])[0]
        if weight.shape != (n, self.backbone.embedding_dim) or bias.shape != (n,):
            raise StateError(f"lae state: linear head {tuple(weight.shape)} does not fit {n} classes")
        self.weight, self.bias, self.tasks = weight, bias, int(state["tasks"])
        self._embedding = None
