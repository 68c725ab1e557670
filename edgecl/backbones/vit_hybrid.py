"""A hybrid ViT-tiny: a ResNet stem makes the patch tokens (timm ``HybridEmbed``), then plain ViT blocks.

``edgecl_vit_tiny_r10t`` follows timm's hybrid ViTs (``vit_tiny_r_s16_p8_224``: a
ResNet stem, then ``HybridEmbed`` projects its feature map to tokens): here the stem
is ``resnet10t``'s ``conv1 .. layer2`` (stride 8, 128 channels, so 16 tokens on a
32x32 input), ``patch_size=1`` on its feature map, then ``depth`` pre-norm
transformer blocks with a [CLS] token. Everything downstream of ``patch_embed`` is
the standard timm ``VisionTransformer`` (``cls_token``, ``pos_embed``, ``blocks``,
``norm``), so the prompt and adapter learners work on it unchanged.

Why a conv stem: on a CPU budget a plain ViT-tiny trained from scratch stays on the
plateau of the classification loss, while this hybrid, its stem initialised from
``edgecl-resnet10t-glyphs`` (``Recipe.init``), learns ("Early convolutions help
transformers see better", Xiao et al., 2021; measurements in
docs/notes-embedded-backbones.md). Its stem keeps BatchNorm: the learners keep frozen
backbones in eval mode.

``register()`` adds the model to timm's registry; ``edgecl.backbones.timm_models``
calls it, so ``timm.create_model("edgecl_vit_tiny_r10t", ...)`` works wherever
edgecl creates models.
"""

from __future__ import annotations

import functools

from torch import nn

from .._compat import import_timm

MODEL_NAME = "edgecl_vit_tiny_r10t"
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


class ResNetStem(nn.Module):
    """``resnet10t`` up to ``layer2``: ``(N, 3, H, W)`` -> ``(N, 128, H / 8, W / 8)``.

    Its parameter names are those of ``resnet10t`` (``conv1.*``, ``bn1.*``,
    ``layer1.*``, ``layer2.*``), so a resnet10t state dict initialises it.
    """

    def __init__(self):
        super().__init__()
        r = import_timm().create_model("resnet10t", pretrained=False, num_classes=0)
        self.conv1, self.bn1, self.act1, self.maxpool = r.conv1, r.bn1, r.act1, r.maxpool
        self.layer1, self.layer2 = r.layer1, r.layer2

    def forward(self, x):
        return self.layer2(self.layer1(self.maxpool(self.act1(self.bn1(self.conv1(x))))))


def vit_tiny_r10t(pretrained: bool = False, **kwargs):
    """The hybrid ViT; ``kwargs`` go to ``VisionTransformer`` (``img_size``, ``depth``, ``global_pool``, ...)."""
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    if pretrained:
        raise ValueError(f"{MODEL_NAME} has no downloadable weights; edgecl loads them from a file")
    kw = dict(embed_dim=192, depth=6, num_heads=3, patch_size=1)
    kw.update({k: v for k, v in kwargs.items() if k not in _TIMM_ONLY})
    model = VisionTransformer(embed_layer=functools.partial(HybridEmbed, ResNetStem()), **kw)
    size = kw.get("img_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    # what timm's builder attaches to its models (edgecl reads "classifier" when loading weights)
    model.pretrained_cfg = model.default_cfg = {
        "architecture": MODEL_NAME, "classifier": "head", "num_classes": model.num_classes,
        "input_size": (3, *size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    }
    return model


@functools.lru_cache(maxsize=None)
def register() -> None:
    """Add ``edgecl_vit_tiny_r10t`` to timm's model registry (once)."""
    from timm.models import register_model
    from timm.models._registry import is_model

    if not is_model(MODEL_NAME):
        vit_tiny_r10t.__name__ = MODEL_NAME
        register_model(vit_tiny_r10t)
