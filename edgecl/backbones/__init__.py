"""Backbones: any timm ViT/CNN by name, frozen, returning pre-logits embeddings.

``create_backbone(name, weights=...)``:

* ``name="edgecl-resnet10t"`` (the default): the embedded backbone, made offline
  on first use and cached (see ``edgecl.backbones.embedded``).
* any timm model name with ``weights=PATH`` to a timm checkpoint (``.pth``/``.bin``)
  or ``.safetensors`` file, loaded by timm's own pretrained-file mechanism
  (position embeddings are resampled for another ``img_size``).
* ``weights="random"``: seeded random initialisation (tests, smoke runs).

No hub download ever happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .base import Backbone, BackboneError, BackboneSpec, build_timm, data_config, embedding_dim_of, sha256_of
from .embedded import DEFAULT_BACKBONE, EMBEDDED, ensure_embedded_weights

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "DEFAULT_BACKBONE",
    "EMBEDDED",
    "backbone_from_state",
    "create_backbone",
]


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    img_size: int | None = None,
    seed: int = 0,
    progress: Callable | None = None,
) -> Backbone:
    """Build a frozen backbone (see module doc); ``img_size`` overrides the input resolution."""
    model_kwargs: dict[str, Any] = {}
    if name in EMBEDDED:
        if weights is not None:
            raise BackboneError(f"{name} is an embedded backbone with its own weights; --weights is for timm models")
        recipe = EMBEDDED[name]
        if img_size is not None and img_size != recipe.input_size[1]:
            raise BackboneError(f"{name} runs at {recipe.input_size[1]} px; img_size cannot change")
        path = ensure_embedded_weights(name, progress)
        timm_name, model_kwargs = recipe.timm_name, dict(recipe.model_kwargs)
        model = build_timm(timm_name, model_kwargs, path)
        source, digest = f"embedded:{name}", sha256_of(path)
        input_size = tuple(recipe.input_size)
        mean, std = recipe.mean, recipe.std
    else:
        timm_name = name
        if img_size is not None:
            model_kwargs["img_size"] = int(img_size)
        if weights is None:
            raise BackboneError(
                f"no weights for timm model {name!r}: pass weights=PATH (a local timm checkpoint or "
                f".safetensors file; nothing is downloaded) or weights='random' for a random init"
            )
        if str(weights) == "random":
            torch.manual_seed(seed)
            model = build_timm(timm_name, model_kwargs, None)
            source, digest = f"random:{seed}", None
        else:
            path = Path(weights).expanduser()
            model = build_timm(timm_name, model_kwargs, path)
            source, digest = str(path.resolve()), sha256_of(path)
        input_size, mean, std = data_config(model, timm_name)
        if img_size is not None:
            input_size = (3, int(img_size), int(img_size))
    spec = BackboneSpec(
        name=name,
        timm_name=timm_name,
        model_kwargs=model_kwargs,
        input_size=input_size,
        mean=mean,
        std=std,
        embedding_dim=embedding_dim_of(model.eval(), input_size),
        weights=source,
        weights_sha256=digest,
    )
    return Backbone(model, spec)


def backbone_from_state(spec: BackboneSpec, state_dict: dict[str, torch.Tensor]) -> Backbone:
    """Rebuild a saved backbone (e.g. from a run directory) without touching its weight source."""
    model = build_timm(spec.timm_name, spec.model_kwargs, None)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"saved backbone weights do not fit {spec.timm_name}: {exc}") from exc
    return Backbone(model, spec)
