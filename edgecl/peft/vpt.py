"""Visual prompt tuning (VPT, Jia et al. 2022): learnable tokens in a frozen ViT's sequence.

* shallow: ``length`` prompt tokens are inserted once, after the prefix
  ([CLS]/register) tokens, before the first block, and travel through all blocks;
* deep: every block gets its own ``length`` new tokens, replacing the previous
  block's prompt outputs in the same slots.

Prompt outputs are dropped after the last block, so pooling (CLS or average)
sees the same tokens as in the frozen model. Initialisation is the paper's
uniform Xavier over the patch dimension, ``U(-v, v)``, ``v = sqrt(6 / (3 p^2 + d))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import PeftError, patch_size, require_vit


class VisualPrompts(nn.Module):
    """Prompt tokens ``(layers, length, dim)``: one layer (shallow) or one per block (deep)."""

    def __init__(self, vit: nn.Module, length: int, deep: bool, generator: torch.Generator | None = None):
        super().__init__()
        require_vit(vit, "vpt_deep" if deep else "vpt_shallow")
        if length < 1:
            raise PeftError(f"prompt length must be >= 1, got {length}")
        self.deep = bool(deep)
        self.prefix = int(vit.num_prefix_tokens)
        dim = vit.embed_dim
        v = math.sqrt(6.0 / (3 * patch_size(vit) ** 2 + dim))
        self.tokens = nn.Parameter(torch.empty(len(vit.blocks) if deep else 1, length, dim))
        with torch.no_grad():
            self.tokens.uniform_(-v, v, generator=generator)

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def _prompt(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.tokens[layer].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)

    def run_blocks(self, blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``blocks`` over tokens ``x`` (prefix first) with the prompts in; returns tokens without them."""
        n, p = self.prefix, self.length
        x = torch.cat([x[:, :n], self._prompt(0, x), x[:, n:]], dim=1)
        for i, block in enumerate(blocks):
            if self.deep and i > 0:
                x = torch.cat([x[:, :n], self._prompt(i, x), x[:, n + p :]], dim=1)
            x = block(x)
        return torch.cat([x[:, :n], x[:, n + p :]], dim=1)
