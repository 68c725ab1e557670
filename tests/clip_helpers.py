"""Shared by the PROOF/ZSCL tests: a CLIP backbone of ``edgecl.clip``'s tiny architecture that needs no pre-training.

Its image tower is the embedded ``edgecl-vit-tiny`` trunk (pre-trained weights, so that images have distinct
features), its text tower seeded random (no prototype map); ``backbone.clip`` is the ``ClipModel``.
"""

from __future__ import annotations

from edgecl.backbones import Backbone, load_weights
from edgecl.clip import TINY, from_config
from edgecl.zoo.embedded import ensure_embedded_weights


def tiny_clip(seed: int = 0) -> Backbone:
    clip = from_config(TINY, seed=seed)
    load_weights(clip.visual.trunk, TINY.trunk[0], ensure_embedded_weights("edgecl-vit-tiny"))
    return clip.backbone()
