"""Backbones: a timm model, frozen, returning pre-logits embeddings, and the spec that rebuilds it.

* :class:`Backbone` / :class:`BackboneSpec`: the frozen model and everything needed to rebuild it
  and preprocess its input.
* :func:`build_timm` / :func:`load_weights`: ``timm.create_model`` with ``num_classes=0`` and a
  strict load of a checkpoint file (known foreign key namings remapped: ``keymaps``; ViT position
  embeddings resampled for another ``img_size``).
* :func:`timm_models`: ``timm`` with edgecl's own architectures registered (``vit_hybrid``).
* :func:`backbone_from_state`: a saved backbone rebuilt from its spec and state dict.

Backbones by name (embedded, named pre-trained, timm name + file, Hugging Face hub names) are made by ``edgecl.zoo``.
"""

from __future__ import annotations

import torch

from .base import (
    Backbone,
    BackboneError,
    BackboneSpec,
    build_timm,
    data_config,
    embedding_dim_of,
    load_weights,
    sha256_of,
    timm_models,
)

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "backbone_from_state",
    "build_timm",
    "data_config",
    "embedding_dim_of",
    "load_weights",
    "sha256_of",
    "timm_models",
]


def backbone_from_state(spec: BackboneSpec, state_dict: dict[str, torch.Tensor]) -> Backbone:
    """Rebuild a saved backbone (e.g. from a run directory) without touching its weight source."""
    model = build_timm(spec.timm_name, spec.model_kwargs, None)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"saved backbone weights do not fit {spec.timm_name}: {exc}") from exc
    return Backbone(model, spec)
