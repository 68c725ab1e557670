"""CLIP models (open_clip) built from a config and loaded strictly from local files; nothing is downloaded.

* ``edgecl.zoo.load_clip("edgecl-clip-tiny")``: the embedded tiny CLIP (its image tower is
  ``edgecl-vit-tiny``, its text tower is pre-trained by ``edgecl.pretrain.clip``; docs/clip.md).
* :func:`load`: any open_clip config (``ViT-B-32``, ...) with every tensor from a local weights file.
* :func:`from_config`: random weights (tests, development); :func:`from_open_clip_config` from an
  ``open_clip_config.json`` (a hub repo's: ``edgecl.zoo.hub``), with :func:`open_clip_tokenizer`.
* :class:`ClipModel`: ``.visual``, ``encode_image``, ``encode_text``, ``tokenize``, ``text_features``,
  ``text_prototypes`` and ``backbone()`` (the image tower for the prototype learners).
"""

from .model import (
    TINY,
    ClipBackbone,
    ClipConfig,
    ClipError,
    ClipModel,
    check_keys,
    from_config,
    from_open_clip_config,
    load,
    load_state,
    open_clip_config,
    open_clip_tokenizer,
    zero_shot_scores,
)

__all__ = [
    "TINY",
    "ClipBackbone",
    "ClipConfig",
    "ClipError",
    "ClipModel",
    "check_keys",
    "from_config",
    "from_open_clip_config",
    "load",
    "load_state",
    "open_clip_config",
    "open_clip_tokenizer",
    "zero_shot_scores",
]
