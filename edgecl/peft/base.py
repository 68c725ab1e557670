"""What every PEFT module needs: structural copies that share weights, and a timm ViT split in stages.

PEFT never edits the frozen backbone. ``shared_copy`` makes a new module tree
whose parameters and buffers *are* the backbone's (same tensors, no memory),
so PEFT layers can be injected into the copy while the original keeps
computing the pre-trained embedding (APER needs both) and the run directory
keeps saving exactly the backbone's own ``state_dict``.

A timm ``VisionTransformer`` is used through its own stages, never a copy of
its code: ``vit_tokens`` (``patch_embed`` -> ``_pos_embed`` -> ``patch_drop``
-> ``norm_pre``) and ``vit_pool`` (``norm`` -> ``forward_head(pre_logits=True)``),
with ``blocks`` in between; ``vit_pool(vit, vit.blocks(vit_tokens(vit, x)))``
equals ``vit(x)`` for a model built with ``num_classes=0``. Splitting at the
tokens is what lets several branches share one patch embedding.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ..errors import EdgeclError


class PeftError(EdgeclError, ValueError):
    """A PEFT method that cannot be applied: unknown name, bad option, unsupported backbone."""


def shared_copy(model: nn.Module) -> nn.Module:
    """A new module tree over the *same* parameter and buffer tensors as ``model``."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def is_vit(model: nn.Module) -> bool:
    """True for a timm ViT-like model with the stages PEFT uses (see module doc)."""
    needed = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head", "num_prefix_tokens")
    return all(hasattr(model, a) for a in needed) and all(hasattr(b, "mlp") for b in model.blocks)


def describe(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def require_vit(model: nn.Module, method: str) -> None:
    if not is_vit(model):
        raise PeftError(
            f"PEFT method {method!r} needs a timm VisionTransformer (patch_embed, blocks with .mlp, "
            f"norm, forward_head); {describe(model)} is not one. For CNNs use 'ssf'."
        )
    if getattr(model, "dynamic_img_size", False):
        raise PeftError(f"PEFT on a ViT with dynamic_img_size=True is not supported ({describe(model)})")


def vit_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images -> token sequence entering the first block (prefix tokens first)."""
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def vit_pool(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens after the last block -> pre-logits embedding (timm's own pooling)."""
    return vit.forward_head(vit.norm(tokens), pre_logits=True)


def patch_size(vit: nn.Module) -> int:
    size = getattr(vit.patch_embed, "patch_size", 16)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
