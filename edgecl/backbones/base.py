"""Frozen timm backbone returning pre-logits embeddings, and its serialisable spec."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._compat import import_timm


class BackboneError(ValueError):
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
    weights: str  # file path, "embedded:<name>" or "random:<seed>"
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _create(timm, timm_name: str, kwargs: dict[str, Any], **extra) -> nn.Module:
    try:
        return timm.create_model(timm_name, **extra, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
    # CNNs take any resolution and no img_size argument.
    return timm.create_model(timm_name, **extra, **{k: v for k, v in kwargs.items() if k != "img_size"})


def build_timm(timm_name: str, model_kwargs: dict[str, Any], weights_file: Path | None) -> nn.Module:
    """``timm.create_model`` with ``num_classes=0``; weights through timm's pretrained-file loader."""
    timm = import_timm()
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:8]
        raise BackboneError(f"unknown timm model {timm_name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    kwargs = dict(model_kwargs, num_classes=0)
    if weights_file is None:
        return _create(timm, timm_name, kwargs, pretrained=False)
    if not weights_file.is_file():
        raise BackboneError(f"weights file not found: {weights_file}")
    try:
        # source="" keeps timm from preferring the hub over the local file.
        overlay = {"file": str(weights_file), "source": ""}
        return _create(timm, timm_name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise BackboneError(f"cannot load {weights_file} into {timm_name}: {exc}") from exc


def data_config(model: nn.Module, timm_name: str) -> tuple[tuple[int, int, int], tuple, tuple]:
    timm = import_timm()
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(int(v) for v in cfg["input_size"]), tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


def embedding_dim_of(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *input_size)).shape[-1])
