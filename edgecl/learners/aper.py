"""APER / ADAM (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023).

First-session adaptation: on the first task only, PEFT modules (hparam
``peft``: ``adapter``, ``ssf``, ``vpt_shallow``, ``vpt_deep``) and a temporary
cosine (or linear) head are trained with cross-entropy; the head is dropped
and the PEFT modules are frozen for good. Every class, then, is its prototype
of the *concatenation* of the pre-trained and the adapted embedding, scored
by cosine similarity: the adapted half brings the first task's domain, the
pre-trained half keeps the generality. Nothing changes after the first task,
so nothing is forgotten, and the device adds classes with the prototype head.

The exported graph holds both paths (``ParallelEmbedding``): for adapter and
VPT one patch embedding feeds the frozen and the adapted block stacks; SSF
scales and shifts the patch embedding's output, so torch runs that stem twice,
but the ONNX exporter merges the two identical patch convolutions. On a CNN
the exporter folds BatchNorm into the pre-trained path's convolutions only,
so an APER-SSF CNN graph stores the backbone twice (~2x the file size).
Adapter, VPT-deep and VPT-shallow need a ViT; SSF also works on CNNs.

Hyper-parameters (``--learner-arg KEY=VALUE``): ``peft`` (adapter), ``epochs``
(5) and ``lr`` (1e-3, AdamW, cosine decay), ``weight_decay`` (1e-4), ``head``
(cosine | linear: the temporary head), ``bottleneck`` (16) and ``scale`` (0.1)
of the adapters, ``prompt_length`` (5) of VPT, ``seed`` (0). The defaults are
sized for a CPU (a few epochs); larger configurations are these flags.

``FirstSessionPeft`` is the shared machinery; ``vpt`` is the same learner
with VPT and without the concatenation (``edgecl.learners.vpt``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
from torch import nn

from ..peft import PEFT_METHODS, ParallelEmbedding, PeftModel
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import HEAD_TYPES, adapt_first_session, task_labels

PEFT_PREFIX = "peft."
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 5, "lr": 1e-3, "weight_decay": 1e-4, "head": "cosine", "seed": 0}


class FirstSessionPeft(PrototypeLearner):
    """PEFT trained on the first task, then frozen; prototypes of ``[pre-trained, adapted]`` or ``adapted``."""

    concat: ClassVar[bool] = True
    choices = {"head": HEAD_TYPES}
    positive = ("epochs", "lr", "bottleneck", "prompt_length")

    def peft_method(self) -> str:
        return self.hparams["peft"]

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        hp = self.hparams
        self.peft = PeftModel(
            self.backbone.model,
            self.peft_method(),
            bottleneck=hp.get("bottleneck", 16),
            scale=hp.get("scale", 0.1),
            prompt_length=hp.get("prompt_length", 5),
            seed=hp["seed"],
        ).to(device)
        self.adapted = False
        self.train_stats: dict[str, float] | None = None  # last epoch of the first-session training
        self._embedding = ParallelEmbedding(self.backbone.model, [self.peft], include_base=True) if self.concat else self.peft

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim * (2 if self.concat else 1)

    def embedding_module(self) -> nn.Module:
        return self._embedding

    @property
    def embedding_frozen(self) -> bool:
        return self.adapted  # PEFT trained on the first task, then frozen for good

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes)
        if not self.adapted:
            self.train_stats = adapt_first_session(self.peft, loader, classes, self.backbone.embedding_dim,
                                                   self.hparams, self.device, progress)
            self.adapted = True
        super().fit_task(loader)

    def extra_state(self) -> dict[str, np.ndarray]:
        peft = {PEFT_PREFIX + k: v.numpy() for k, v in self.peft.peft_state().items()}
        return {"adapted": np.array(self.adapted), **peft}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        self.peft.load_peft_state({k[len(PEFT_PREFIX) :]: v for k, v in state.items() if k.startswith(PEFT_PREFIX)})
        self.adapted = bool(state.get("adapted", True))
        if self.adapted:
            self.peft.freeze()


@register_learner
class APER(FirstSessionPeft):
    name = "aper"
    defaults = {"peft": "adapter", "bottleneck": 16, "scale": 0.1, "prompt_length": 5, **TRAIN_DEFAULTS}
    choices = {"peft": PEFT_METHODS, "head": HEAD_TYPES}
