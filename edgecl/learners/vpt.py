"""VPT (Jia et al., "Visual Prompt Tuning", 2022) for class-incremental learning with a prototype head.

Prompt tokens (hparam ``deep``: a new set at every block, else shallow: one
set at the input) are trained on the first task with a temporary head, then
frozen; every class is its prototype of the prompted embedding, scored by
cosine similarity, so the device can add classes. This is APER-VPT without
the concatenation with the pre-trained embedding (same code,
``edgecl.learners.aper.FirstSessionPeft``). Needs a ViT.

Hyper-parameters: ``deep`` (false), ``prompt_length`` (5), ``epochs`` (5),
``lr`` (1e-2), ``weight_decay``, ``head``, ``seed`` (see ``aper``).
"""

from __future__ import annotations

from .aper import TRAIN_DEFAULTS, FirstSessionPeft
from .registry import register_learner


@register_learner
class VPT(FirstSessionPeft):
    name = "vpt"
    concat = False
    defaults = {"deep": False, "prompt_length": 5, **TRAIN_DEFAULTS, "lr": 1e-2}

    def peft_method(self) -> str:
        return "vpt_deep" if self.hparams["deep"] else "vpt_shallow"
