"""Folding PEFT modules into the frozen layers they modulate: the adapted network without the modules.

A module folds when it is an affine map next to a linear layer, so that the two
compose into one layer of the same shape:

* SSF after a ``Linear``/``Conv2d`` (``y = (W x + b) * s + t``): ``W' = diag(s) W``,
  ``b' = s * b + t`` (per output channel); after a ``LayerNorm``:
  ``gamma' = s * gamma``, ``beta' = s * beta + t``. Exact up to float rounding,
  the re-parameterisation of the SSF paper.
* A *linear* adapter parallel to a linear layer (``y = W x + b + s * up(down(x))``,
  no activation between the projections: LoRA's form): ``W' = W + s * U D``,
  ``b' = b + s * (U b_d + b_u)`` (``fold_parallel_linear``).

What does not fold, and why (``fold_reason``):

* edgecl's adapters (``adapter``: AdaptFormer, ``relu`` between the projections)
  are not a linear map of their input, so no weight matrix equals them; they
  also sit beside the whole MLP (``mlp(x) + adapter(x)``), not beside one linear layer.
* Visual prompts (``vpt_shallow``/``vpt_deep``) are extra tokens of the
  sequence, not a change of any weight.

``fold_peft(peft_model)`` returns a plain copy of the backbone with every SSF
folded: the same modules, parameter count and graph as the pre-trained network
(no Mul/Add per layer), new weight tensors (the backbone itself is untouched).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .adapter import Adapter
from .base import PeftError
from .ssf import SSF, WithSSF

_REASONS = {
    "adapter": "edgecl's adapters have a ReLU between their projections: not a linear map, so no weight "
               "matrix equals them, and they sit beside the whole MLP, not beside one linear layer",
    "vpt_shallow": "visual prompts are extra tokens in the sequence, not a change of any weight",
    "vpt_deep": "visual prompts are extra tokens in the sequence, not a change of any weight",
}


def fold_reason(method: str) -> str | None:
    """Why PEFT ``method`` cannot fold into the backbone's weights, or ``None`` when it can (``ssf``)."""
    return _REASONS.get(method)


@torch.no_grad()
def fold_ssf(layer: nn.Module, ssf: SSF) -> nn.Module:
    """A new layer equal to ``ssf(layer(x))``: a ``Linear``, ``Conv2d`` or ``LayerNorm`` with folded weights."""
    s, t = ssf.scale.detach(), ssf.shift.detach()
    out = copy.deepcopy(layer)
    if isinstance(layer, nn.LayerNorm):
        out.weight.copy_(layer.weight * s)
        out.bias.copy_(layer.bias * s + t)
        return out
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise PeftError(f"cannot fold SSF into a {type(layer).__name__}")
    out.weight.copy_(layer.weight * s.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    bias = layer.bias.detach() * s + t if layer.bias is not None else t.clone()
    out.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
    return out


@torch.no_grad()
def fold_parallel_linear(linear: nn.Linear, adapter: Adapter) -> nn.Linear:
    """A new ``Linear`` equal to ``linear(x) + adapter(x)`` for a *linear* adapter (``adapter.act`` the identity).

    ``PeftError`` for a non-linear adapter (see module doc)."""
    if not isinstance(adapter.act, nn.Identity):
        raise PeftError(f"a non-linear adapter ({type(adapter.act).__name__} between its projections) cannot "
                        "fold into a linear layer: it is not a linear map")
    if (adapter.down.in_features, adapter.up.out_features) != (linear.in_features, linear.out_features):
        raise PeftError("adapter and linear layer have different input/output widths")
    s, down, up = adapter.scale, adapter.down, adapter.up
    out = nn.Linear(linear.in_features, linear.out_features, dtype=linear.weight.dtype)
    out.weight.copy_(linear.weight + s * up.weight @ down.weight)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    out.bias.copy_(bias + s * (up.weight @ down.bias + up.bias))
    return out.requires_grad_(False)


def fold_peft(peft_model: nn.Module) -> nn.Module:
    """A plain copy of ``peft_model.model`` (an ``edgecl.peft.PeftModel``) with its modules folded into the
    weights; ``PeftError`` naming the reason for methods that do not fold."""
    reason = fold_reason(peft_model.method)
    if reason is not None:
        raise PeftError(f"PEFT method {peft_model.method!r} cannot be folded into the backbone: {reason}")
    model = copy.deepcopy(peft_model.model)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, WithSSF)]
    for parent, name, child in targets:
        setattr(parent, name, fold_ssf(child.layer, child.ssf))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class FoldedExperts(nn.Module):
    """``concat([m(x) for m in models])``: folded networks side by side in one graph (eval mode only)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def train(self, mode: bool = True) -> "FoldedExperts":
        return super().train(False)  # frozen networks: BatchNorm statistics stay fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [m(x) for m in self.models]
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]
