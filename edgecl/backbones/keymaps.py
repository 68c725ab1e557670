"""Known remaps from other libraries' checkpoint key naming onto timm models.

A checkpoint made by another library holds the same tensors under other names:
loaded as is into a timm model, nothing matches and (with a non-strict load)
the model silently stays random. A :class:`KeyMap` recognises such a file by its
keys, says which timm architectures it is *exact* for (same layers, padding and
BatchNorm epsilon, so the remapped model computes the same function), and
renames the keys. Strictness is checked by the caller after the remap
(``edgecl.backbones.base.load_weights``): every backbone tensor must be filled.

Both maps below walk timm's block structure (``model.blocks[stage][i]``) in
order, so they hold for every width/depth variant of the family whose layers
line up; shapes are checked on load.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdgeclError

StateDict = dict[str, torch.Tensor]


class KeyMapError(EdgeclError, ValueError):
    """A checkpoint in a known foreign naming whose layers do not line up with the target model."""


@dataclass(frozen=True)
class KeyMap:
    """A foreign checkpoint naming: how to recognise it and how to rename it for timm."""

    name: str
    description: str
    targets: tuple[str, ...]  # timm model name patterns the remap is exact for
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    apply: Callable[[Mapping[str, torch.Tensor], nn.Module], StateDict]

    def fits(self, timm_name: str) -> bool:
        return any(fnmatch.fnmatchcase(timm_name, pat) for pat in self.targets)


def _flat_blocks(model: nn.Module) -> list[str]:
    """timm key prefixes of the inverted-residual blocks, in forward order: ``blocks.S.I.``."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise KeyMapError(f"{type(model).__name__} has no timm EfficientNet-style 'blocks' stages")
    return [f"blocks.{s}.{i}." for s, stage in enumerate(blocks) for i in range(len(stage))]


def _rename(key: str, rest: str, prefix: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    raise KeyMapError(f"unexpected key {key!r}")


def _block(prefixes: list[str], n: int, key: str) -> str:
    if not 0 <= n < len(prefixes):
        raise KeyMapError(f"{key!r}: block {n} of a model with {len(prefixes)} blocks")
    return prefixes[n]


# torchvision MobileNetV2: features.0 = stem (conv, bn), features.1..17 = inverted
# residuals, features.18 = head (conv, bn), classifier.1 = linear. The first block
# has no expansion (depthwise then projection), as timm's DepthwiseSeparableConv.
_TV_DS = {"conv.0.0.": "conv_dw.", "conv.0.1.": "bn1.", "conv.1.": "conv_pw.", "conv.2.": "bn2."}
_TV_IR = {
    "conv.0.0.": "conv_pw.", "conv.0.1.": "bn1.", "conv.1.0.": "conv_dw.", "conv.1.1.": "bn2.",
    "conv.2.": "conv_pwl.", "conv.3.": "bn3.",
}


def _tv_mobilenetv2_detect(sd: Mapping[str, torch.Tensor]) -> bool:
    return "features.0.0.weight" in sd and "features.1.conv.0.0.weight" in sd


def _tv_mobilenetv2_apply(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    prefixes = _flat_blocks(model)
    head = len(prefixes) + 1
    out: StateDict = {}
    for key, value in sd.items():
        if key.startswith("classifier.1."):
            out["classifier." + key[len("classifier.1."):]] = value
            continue
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if not m:
            raise KeyMapError(f"unexpected key {key!r}")
        n, rest = int(m.group(1)), m.group(2)
        if n == 0:
            out[_rename(key, rest, "", {"0.": "conv_stem.", "1.": "bn1."})] = value
        elif n == head:
            out[_rename(key, rest, "", {"0.": "conv_head.", "1.": "bn2."})] = value
        else:
            out[_rename(key, rest, _block(prefixes, n - 1, key), _TV_DS if n == 1 else _TV_IR)] = value
    return out


# EfficientNet-PyTorch (lukemelas; the EfficientNet-Lite fork keeps its naming):
# _conv_stem/_bn0, _blocks.N (with _expand_conv/_bn0 only when expanded),
# _conv_head/_bn1, _fc. Its ImageNet weights are ported from TensorFlow: 'same'
# padding and BatchNorm eps 1e-3, which timm's tf_* variants reproduce.
_EP_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.", "_fc.": "classifier."}
_EP_DS = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_EP_IR = {
    "_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.", "_bn2.": "bn3.",
}
_EP_SE = {"_se_reduce.": "se.conv_reduce.", "_se_expand.": "se.conv_expand."}


def _effnet_pytorch_detect(sd: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in sd and "_blocks.0._depthwise_conv.weight" in sd


def _effnet_pytorch_apply(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    prefixes = _flat_blocks(model)
    out: StateDict = {}
    for key, value in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(.+)", key)
        if not m:
            out[_rename(key, key, "", _EP_TOP)] = value
            continue
        n, rest = int(m.group(1)), m.group(2)
        table = _EP_IR if f"_blocks.{n}._expand_conv.weight" in sd else _EP_DS
        out[_rename(key, rest, _block(prefixes, n, key), {**table, **_EP_SE})] = value
    return out


KEYMAPS: dict[str, KeyMap] = {
    km.name: km
    for km in (
        KeyMap(
            name="torchvision-mobilenetv2",
            description="torchvision MobileNetV2 (features.N.conv.*)",
            targets=("mobilenetv2_*",),
            detect=_tv_mobilenetv2_detect,
            apply=_tv_mobilenetv2_apply,
        ),
        KeyMap(
            name="efficientnet-pytorch",
            description="EfficientNet-PyTorch / EfficientNet-Lite-PyTorch, TF-ported ('same' padding, BN eps 1e-3)",
            targets=("tf_efficientnet_*",),
            detect=_effnet_pytorch_detect,
            apply=_effnet_pytorch_apply,
        ),
    )
}


def find_keymap(state_dict: Mapping[str, torch.Tensor]) -> KeyMap | None:
    """The known foreign naming of ``state_dict``, or ``None`` (timm naming or unknown)."""
    for km in KEYMAPS.values():
        if km.detect(state_dict):
            return km
    return None
