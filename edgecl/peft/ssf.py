"""SSF: scaling and shifting of deep features (Lian et al. 2022).

Each wrapped layer's output is modulated per channel, ``y * scale + shift``,
with ``scale = 1`` and ``shift = 0`` at the start, so the model computes
exactly the pre-trained function until training moves them (the paper's
small random init around (1, 0) is dropped for that guarantee). Where:

* ViTs: after every ``Linear`` (patch-embedding projection included: it is a
  ``Conv2d``), every ``LayerNorm`` (block norms, final norm), as in the paper;
* CNNs: after every convolution and linear layer. With frozen BatchNorm (eval
  mode: a fixed per-channel affine map) a scale-shift after the convolution
  spans the same functions as one after the BatchNorm that follows it, and
  it avoids going behind timm's fused BatchNorm+activation layers.

Being an affine map per channel after a linear layer, SSF folds into the
frozen weights (``edgecl.peft.fold.fold_peft``); learners export it as is (a Mul
and an Add) unless they fold it (LAE's ``fold``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import is_vit


class SSF(nn.Module):
    """Per-channel ``x * scale + shift``; channels on axis 1 (NCHW convolution outputs) or the last axis."""

    def __init__(self, channels: int, channels_first: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return x * self.scale[:, None, None] + self.shift[:, None, None]
        return x * self.scale + self.shift


class WithSSF(nn.Module):
    """``ssf(layer(x))``: a frozen layer followed by its scale-shift."""

    def __init__(self, layer: nn.Module, ssf: SSF):
        super().__init__()
        self.layer = layer
        self.ssf = ssf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssf(self.layer(x))


def _channels(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.LayerNorm) and layer.elementwise_affine and len(layer.normalized_shape) == 1:
        return layer.normalized_shape[0]
    return None


def add_ssf(model: nn.Module) -> list[SSF]:
    """Wrap the layers listed in the module doc of ``model`` (a ``shared_copy``) in place; returns the SSF modules."""
    kinds = (nn.Linear, nn.Conv2d, nn.LayerNorm) if is_vit(model) else (nn.Linear, nn.Conv2d)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kinds) and _channels(child) is not None
    ]
    added = []
    for parent, name, child in targets:
        ssf = SSF(_channels(child), channels_first=isinstance(child, nn.Conv2d))
        setattr(parent, name, WithSSF(child, ssf))
        added.append(ssf)
    return added
