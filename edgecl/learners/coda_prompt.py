"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting", CVPR 2023).

Each prefixed block's prompt is a weighted sum of components, weights
``cos(q * A_m, K_m)`` from the [CLS] query of the frozen ViT: no hard
selection. Every task adds ``per_task`` components (with keys and attention
vectors) initialised orthogonal to the old ones, which are frozen; training
adds ``ortho`` times an orthogonality penalty on components, keys and
attention vectors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..peft.prompts import CodaPromptPool
from .prompting import COMMON_CHOICES, COMMON_DEFAULTS, PromptLearner, block_list
from .registry import register_learner


@register_learner
class CodaPrompt(PromptLearner):
    name = "coda_prompt"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "layers": "0,1,2,3,4", "length": 8, "per_task": 10, "ortho": 0.1,
    }
    choices: ClassVar[dict[str, tuple]] = COMMON_CHOICES
    aux_coef_name = "ortho"

    def make_pool(self, dim, hp):
        return CodaPromptPool(dim, block_list(hp, "layers"), length=hp["length"], per_task=hp["per_task"], seed=hp["seed"])
