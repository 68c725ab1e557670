"""What the CLIP learners (PROOF, ZSCL) share: the CLIP parts of a backbone, class-name texts, reference data.

A CLIP backbone is an ``edgecl.backbones.Backbone`` with a CLIP model: ``backbone.clip`` (an
``edgecl.clip.ClipModel``, whose ``backbone()`` is the image tower) or else ``backbone.model``, with
``encode_image(x)``, ``encode_text(tokens)``, ``logit_scale``, ``visual`` and ``tokenize(texts)``
returning ``(N, L)`` token ids, and optionally ``prototypes_from_text`` (the ``edgecl.clip`` map of unit
text embeddings to class prototypes in the image-feature space, what the bundle's text tower outputs
for a class added by name on the device). ``ImageTower``/``UnitImageTower`` are the image side as
embedding modules; ``text_features`` embeds class names through the text side (unit rows) and
``class_prototypes`` turns them into prototypes in the image-feature space. A class named ``U+XXXX`` (the
glyphs benchmark) is described by its Unicode character name, as the CLIP was pre-trained on.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def clip_model(backbone, learner: str) -> nn.Module:
    """The backbone's CLIP model (``encode_image``/``encode_text``); ``ConfigError`` for another backbone."""
    model = clip_of(backbone)
    if not all(callable(getattr(model, m, None)) for m in ("encode_image", "encode_text", "tokenize")):
        raise ConfigError(f"{learner} needs a CLIP backbone (image and text towers and a tokenizer), "
                          f"got {backbone.spec.name!r}")
    return model


def clip_of(backbone) -> nn.Module:
    """``backbone.clip`` if it has one, else ``backbone.model``."""
    clip = getattr(backbone, "clip", None)
    return clip if clip is not None else backbone.model


def class_text(name: str, template: str = "{}") -> str:
    """The text describing class ``name`` (``edgecl.clip.zeroshot.class_text``: the Unicode name of a ``U+XXXX``
    glyph class, else the name itself) in ``template``."""
    from ..clip.zeroshot import class_text as described

    return template.format(described(name))


def loader_class_names(loader, count: int, learner: str) -> list[str]:
    """The names of classes ``0..count-1`` of a ``BatchLoader``'s dataset (global labels after the protocol's remap)."""
    names = getattr(getattr(loader, "dataset", None), "class_names", None)
    if names is None or len(names) < count:
        raise ConfigError(f"{learner} needs the class names: train it with a BatchLoader over a named dataset")
    return [str(n) for n in names[:count]]


@torch.no_grad()
def text_features(backbone, texts: Iterable[str], batch_size: int = 256) -> torch.Tensor:
    """``(N, D)`` unit-norm text embeddings of ``texts`` through the backbone's text tower (CPU float32)."""
    texts, model = list(texts), clip_of(backbone)
    device = next(model.parameters()).device
    out = [model.encode_text(model.tokenize(texts[i : i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(out), dim=-1) if out else torch.zeros(0, 0)


@torch.no_grad()
def class_prototypes(backbone, texts: Iterable[str]) -> torch.Tensor:
    """``(N, D)`` class prototypes of ``texts`` in the image-feature space: the CLIP's ``prototypes_from_text``
    of their unit text embeddings (the text embeddings themselves for a CLIP without one)."""
    feats, model = text_features(backbone, texts), clip_of(backbone)
    mapping = getattr(model, "prototypes_from_text", None)
    return (mapping(feats) if callable(mapping) else feats).float().cpu()


class ImageTower(nn.Module):
    """Images -> CLIP image embeddings (what the bundle's ``features`` are)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


class UnitImageTower(ImageTower):
    """Images -> unit-norm CLIP image embeddings (its own class: the feature cache keys modules by type and weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(x), dim=-1)


def reference_images(classes: int, per_class: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """Reference images and their texts: ``per_class`` renderings of each of ``classes`` code points drawn by few
    of matplotlib's fonts, none of them a benchmark class (``edgecl.data.glyphs.pretrain_corpus(source=
    "matplotlib")``, the glyph half of the tiny CLIP's pre-training data, rendered with another seed), named
    by their Unicode names; one text per image."""
    from ..data.glyphs import pretrain_corpus

    ds = pretrain_corpus(classes, per_class, size=image_size, seed=1, source="matplotlib")
    return np.asarray(ds.images), [class_text(ds.class_names[int(y)]) for y in ds.labels]
