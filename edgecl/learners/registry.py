"""The one registry of learners: name -> Learner class."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError

LEARNERS: dict[str, type] = {}


def register_learner(cls):
    if cls.name in LEARNERS:
        raise ValueError(f"learner {cls.name!r} registered twice")
    LEARNERS[cls.name] = cls
    return cls


def create_learner(name: str, backbone, device: str = "cpu", backbones: Callable | None = None, **hparams: Any):
    """Learner ``name`` on ``backbone``. ``backbones(name, weights, seed=...)`` builds a further backbone by name
    for the learners that have one (PromptFusion's ``second``; ``edgecl.zoo.create_backbone``, which sits above
    the learners and is therefore passed in)."""
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; available: {', '.join(sorted(LEARNERS))}")
    learner = LEARNERS[name](backbone, device=device, **hparams)
    learner.backbone_factory = backbones
    return learner
