"""Bottleneck adapters (AdaptFormer, Chen et al. 2022), parallel to each ViT block's MLP.

``Adapter`` is ``x -> s * up(relu(down(x)))`` with a ``d -> r -> d``
bottleneck. The up-projection starts at zero, so an adapted model computes
exactly the pre-trained function until training moves it. ``ParallelMlp``
puts one beside a block's MLP: the block computes
``x + mlp(norm2(x)) + s * adapter(norm2(x))``. The adapter reads the block's
own pre-MLP LayerNorm output (AdaptFormer's adapter-LayerNorm variant) so the
injection is a swap of ``block.mlp``, leaving timm's ``Block.forward`` as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import PeftError, require_vit


class Adapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim)
        self.scale = float(scale)
        bound = 1.0 / math.sqrt(dim)  # kaiming_uniform(a=sqrt(5)), torch's Linear default, seeded
        with torch.no_grad():
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scale


class ParallelMlp(nn.Module):
    """A frozen MLP with an adapter beside it: ``mlp(x) + adapter(x)``."""

    def __init__(self, mlp: nn.Module, adapter: Adapter):
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


def add_adapters(vit: nn.Module, bottleneck: int, scale: float, seed: int = 0) -> list[Adapter]:
    """Swap every ``block.mlp`` of ``vit`` (a ``shared_copy``) for a ``ParallelMlp``; returns the adapters."""
    require_vit(vit, "adapter")
    if bottleneck < 1:
        raise PeftError(f"adapter bottleneck must be >= 1, got {bottleneck}")
    if not math.isfinite(scale):
        raise PeftError(f"adapter scale must be finite, got {scale}")
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for block in vit.blocks:
        adapter = Adapter(vit.embed_dim, bottleneck, scale, gen)
        block.mlp = ParallelMlp(block.mlp, adapter)
        adapters.append(adapter)
    return adapters
