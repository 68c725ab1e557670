"""L2P (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022).

A pool of ``size`` prompts with keys, shared by all tasks; each image prepends
the ``top_n`` prompts whose keys best match the [CLS] query of the frozen ViT
(prompt-tuning), and is classified from the mean output at the prompt
positions (``pool=prompt``, as in the paper; ``pool=cls`` uses [CLS]). Training:
masked cross-entropy plus ``pull`` times the surrogate loss that pulls the
selected keys to the queries. Selection is per image (no batch-wise voting).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..peft.prompts import L2PPool
from .prompting import COMMON_CHOICES, COMMON_DEFAULTS, PromptLearner
from .registry import register_learner


@register_learner
class L2P(PromptLearner):
    name = "l2p"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "size": 10, "length": 5, "top_n": 5, "pull": 0.1, "pool": "prompt",
    }
    choices: ClassVar[dict[str, tuple]] = {**COMMON_CHOICES, "pool": ("prompt", "cls")}
    aux_coef_name = "pull"

    def make_pool(self, dim, hp):
        return L2PPool(dim, size=hp["size"], length=hp["length"], top_n=hp["top_n"])

    def pool_mode(self, hp):
        return hp["pool"]
