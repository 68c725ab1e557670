"""Shared by the PROOF/ZSCL tests: a small CLIP backbone built like ``edgecl.clip``'s tiny one.

Its image tower is the embedded ``edgecl-vit-tiny`` trunk (pre-trained, so that images have distinct
features), its text tower a seeded random 2-layer transformer over a byte tokenizer; the backbone's
``model`` is the image trunk and ``backbone.clip`` the whole CLIP, as ``edgecl.clip.ClipBackbone``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecl._compat import _ensure_torchvision
from edgecl.backbones import Backbone
from edgecl.zoo import create_backbone

CONTEXT = 40
SOT, EOT = 257, 258  # the end token has the highest id: open_clip pools the text at its argmax


def byte_tokenize(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [SOT, *(b + 1 for b in t.upper().encode("utf-8")[: CONTEXT - 2]), EOT]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class TinyClip(nn.Module):
    """An open_clip ``CLIP`` around an image trunk, with ``encode_image``/``encode_text``/``tokenize``."""

    def __init__(self, trunk: nn.Module, embed_dim: int, seed: int = 0):
        super().__init__()
        _ensure_torchvision()
        import open_clip

        torch.manual_seed(seed)
        vision = {"timm_model_name": "resnet10t", "timm_proj": "none", "timm_pool": "", "image_size": 32}
        text = {"context_length": CONTEXT, "vocab_size": 259, "width": 48, "heads": 2, "layers": 2}
        self.model = open_clip.CLIP(embed_dim, vision, text)
        self.model.visual.trunk = trunk
        self.visual, self.logit_scale = self.model.visual, self.model.logit_scale

    def encode_image(self, x, normalize: bool = False):
        return self.model.encode_image(x, normalize=normalize)

    def encode_text(self, tokens, normalize: bool = False):
        return self.model.encode_text(tokens, normalize=normalize)

    def tokenize(self, texts):
        return byte_tokenize([texts] if isinstance(texts, str) else list(texts))

    def forward(self, x):
        return self.encode_image(x)


def tiny_clip(seed: int = 0) -> Backbone:
    """A fresh CLIP backbone (its image trunk a new copy of ``edgecl-vit-tiny``)."""
    backbone = create_backbone("edgecl-vit-tiny")
    backbone.__dict__["clip"] = TinyClip(backbone.model, backbone.spec.embedding_dim, seed).eval()
    return backbone
