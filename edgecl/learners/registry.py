"""The one registry of learners: name -> Learner class."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

LEARNERS: dict[str, type] = {}


def register_learner(cls):
    if cls.name in LEARNERS:
        raise ValueError(f"learner {cls.name!r} registered twice")
    LEARNERS[cls.name] = cls
    return cls


def create_learner(name: str, backbone, device: str = "cpu", **hparams: Any):
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; available: {', '.join(sorted(LEARNERS))}")
    return LEARNERS[name](backbone, device=device, **hparams)
