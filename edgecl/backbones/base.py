"""Frozen timm backbone returning pre-logits embeddings, and its serialisable spec."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecl_runtime.manifest import sha256_file

from .._compat import import_timm
from ..errors import EdgeclError
from .keymaps import KEYMAPS, KeyMapError, find_keymap
from .vit_hybrid import register as register_vit_hybrid


class BackboneError(EdgeclError, ValueError):
    """A backbone that cannot be built: unknown name, missing or incompatible weights."""


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone and preprocess its input."""

    name: str  # what the user asked for: a timm name or an embedded default
    timm_name: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    weights: str  # "file:<name>", "embedded:<name>", "package:...", "random:<seed>" or "hf-hub:<repo>@<commit>"
    weights_sha256: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"], d["mean"], d["std"] = list(self.input_size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        d = dict(d)
        d["input_size"] = tuple(int(v) for v in d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


class Backbone(nn.Module):
    """A frozen timm model (``num_classes=0``): images ``(N, 3, H, W)`` -> embeddings ``(N, D)``."""

    def __init__(self, model: nn.Module, spec: BackboneSpec):
        super().__init__()
        self.model = model
        self.spec = spec
        self.freeze()

    def freeze(self) -> "Backbone":
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "Backbone":  # frozen: stays in eval mode
        return super().train(False)

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


sha256_of = sha256_file  # one implementation for training and device side


def timm_models():
    """The ``timm`` module with edgecl's own architectures registered (``edgecl_vit_tiny_r10t``)."""
    timm = import_timm()
    register_vit_hybrid()
    return timm


def _create(timm, timm_name: str, kwargs: dict[str, Any], **extra) -> nn.Module:
    try:
        return timm.create_model(timm_name, **extra, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
    # CNNs take any resolution and no img_size argument.
    return timm.create_model(timm_name, **extra, **{k: v for k, v in kwargs.items() if k != "img_size"})


def build_timm(timm_name: str, model_kwargs: dict[str, Any], weights_file: Path | None) -> nn.Module:
    """``timm.create_model`` with ``num_classes=0``, then a strict load of ``weights_file`` (see ``load_weights``)."""
    timm = timm_models()
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:8]
        raise BackboneError(f"unknown timm model {timm_name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    model = _create(timm, timm_name, dict(model_kwargs, num_classes=0), pretrained=False)
    if weights_file is not None:
        load_weights(model, timm_name, weights_file)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: ``.safetensors``, or a torch ``.pth``/``.bin`` (a plain state dict or a
    training checkpoint holding one under ``state_dict``/``model``/EMA keys; ``module.`` prefixes removed)."""
    timm = timm_models()
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        sd = timm.models.load_state_dict(str(path), use_ema=True)
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise BackboneError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path} holds no state dict of tensors")
    return sd


def _timm_filter_fn(timm_name: str):
    """The checkpoint filter timm itself applies for this architecture (e.g. ViT position-embedding
    resampling for another ``img_size``): the model module's ``checkpoint_filter_fn``, if any."""
    timm = timm_models()
    module = sys.modules.get(timm.models.model_entrypoint(timm_name).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _examples(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights(model: nn.Module, timm_name: str, path: Path) -> str | None:
    """Load ``path`` into ``model`` (built with ``num_classes=0``), refusing any file that does not fill
    every backbone tensor.

    The file's classifier head is dropped. A checkpoint in a known foreign key
    naming (``keymaps.KEYMAPS``, e.g. torchvision's MobileNetV2) is renamed first
    when the remap is exact for ``timm_name``. timm's own non-strict loader
    would only warn about unmatched keys and leave the model random; here any
    missing, unexpected or mis-shaped tensor is a ``BackboneError`` with counts
    and examples, and the model is left as it was. Returns the name of the
    remap applied, if any.
    """
    sd = read_state_dict(path)
    sd, keymap, hint = _remap(sd, model, timm_name, path)
    sd = _adapt(sd, model, timm_name, path)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    sd = {k: v for k, v in sd.items() if not any(k.startswith(c + ".") for c in classifiers)}
    _check_fit(sd, model.state_dict(), timm_name, path, hint)
    model.load_state_dict(sd, strict=False)  # strict up to the ignored counters, checked above
    return keymap.name if keymap else None


def _remap(sd: dict, model: nn.Module, timm_name: str, path: Path) -> tuple[dict, object, str]:
    """Renames a known foreign key naming onto timm's when the remap is exact for ``timm_name``;
    returns the state dict, the keymap applied (or None) and a hint for the misfit error."""
    keymap = find_keymap(sd)
    if keymap is None:
        return sd, None, ""
    if not keymap.fits(timm_name):
        return sd, None, f"; it is in the key naming of {keymap.description}, which edgecl remaps onto {', '.join(keymap.targets)}"
    try:
        return keymap.apply(sd, model), keymap, ""
    except KeyMapError as exc:
        raise BackboneError(f"{path} ({keymap.description}) does not line up with {timm_name}: {exc}") from exc


def _adapt(sd: dict, model: nn.Module, timm_name: str, path: Path) -> dict:
    """Runs timm's own checkpoint filter of the architecture, if it has one."""
    filter_fn = _timm_filter_fn(timm_name)
    if filter_fn is None:
        return sd
    try:
        try:
            return filter_fn(sd, model)
        except TypeError:  # as timm: some filters take the state dict only
            return filter_fn(sd)
    except Exception as exc:
        raise BackboneError(f"cannot adapt {path} to {timm_name}: {type(exc).__name__}: {exc}") from exc


def _check_fit(sd: dict, target: dict, timm_name: str, path: Path, hint: str) -> None:
    """A ``BackboneError`` with counts and examples unless ``sd`` fills every tensor of ``target``."""
    # A buffer that only counts BatchNorm updates is no weight: old checkpoints lack it.
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    missing = [k for k in wanted if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{len(missing)} of {len(wanted)} model tensors missing from the file" + (f" (e.g. {_examples(missing)})" if missing else "")]
    parts.append(f"{len(unexpected)} unexpected" + (f" (e.g. {_examples(unexpected)})" if unexpected else ""))
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} with another shape (e.g. {k}: file {tuple(sd[k].shape)}, model {tuple(target[k].shape)})")
    known = "; ".join(f"{km.description} -> {', '.join(km.targets)}" for km in KEYMAPS.values())
    raise BackboneError(
        f"weights file {path} does not fit timm model {timm_name!r} (classifier head aside): "
        + ", ".join(parts)
        + (hint or f". A checkpoint of another architecture or in another library's key naming? Known remaps: {known}")
    )


def data_config(model: nn.Module, timm_name: str) -> tuple[tuple[int, int, int], tuple, tuple]:
    timm = timm_models()
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(int(v) for v in cfg["input_size"]), tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


def embedding_dim_of(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *input_size)).shape[-1])
