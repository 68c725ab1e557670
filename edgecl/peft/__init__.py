"""Parameter-efficient fine-tuning (PEFT) of a frozen timm backbone: small composable modules.

* ``adapter``: AdaptFormer bottleneck adapters beside each ViT block's MLP;
* ``ssf``: per-channel scale and shift after linear/conv/norm layers (ViTs and CNNs);
* ``vpt_shallow`` / ``vpt_deep``: visual prompt tokens at the input / at every block.

``PeftModel(backbone_model, method, ...)`` applies one of them without
touching the backbone (see ``edgecl.peft.model``); ``ParallelEmbedding``
concatenates several in one exportable graph; ``fold_peft`` folds SSF into the
backbone's weights (``edgecl.peft.fold``). Adapter and SSF start as the
identity (the adapted model equals the pre-trained one before training).
"""

from .adapter import Adapter, ParallelMlp, add_adapters
from .base import PeftError, is_vit, shared_copy, vit_pool, vit_tokens
from .fold import FoldedExperts, fold_parallel_linear, fold_peft, fold_reason
from .model import PEFT_METHODS, ParallelEmbedding, PeftModel
from .ssf import SSF, WithSSF, add_ssf
from .vpt import VisualPrompts

__all__ = [
    "PEFT_METHODS",
    "SSF",
    "Adapter",
    "FoldedExperts",
    "ParallelEmbedding",
    "ParallelMlp",
    "PeftError",
    "PeftModel",
    "VisualPrompts",
    "WithSSF",
    "add_adapters",
    "add_ssf",
    "fold_parallel_linear",
    "fold_peft",
    "fold_reason",
    "is_vit",
    "shared_copy",
    "vit_pool",
    "vit_tokens",
]
