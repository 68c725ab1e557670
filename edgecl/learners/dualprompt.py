"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free CL", ECCV 2022).

A shared G-prompt (prefix-tuning in blocks ``g_layers``) and one E-prompt per
task (blocks ``e_layers``) with a key. Training uses the task's own E-prompt
and pulls its key to the queries (``pull`` times ``1 - cos``); at inference the
E-prompt whose key best matches the [CLS] query of the frozen ViT is used
(``argmax`` in the exported graph). Earlier E-prompts are frozen.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..peft.prompts import DualPromptPool
from .prompting import COMMON_CHOICES, COMMON_DEFAULTS, PromptLearner, block_list
from .registry import register_learner


@register_learner
class DualPrompt(PromptLearner):
    name = "dualprompt"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "g_layers": "0,1", "e_layers": "2,3,4", "g_length": 5, "e_length": 5, "pull": 1.0,
    }
    choices: ClassVar[dict[str, tuple]] = COMMON_CHOICES
    aux_coef_name = "pull"

    def make_pool(self, dim, hp):
        return DualPromptPool(dim, block_list(hp, "g_layers"), block_list(hp, "e_layers"), hp["g_length"], hp["e_length"])
