"""The one path of learner hyper-parameters, validated at the boundary (``RunConfig.learner_args``, ``--learner-arg``).

A ``ConfiguredLearner`` declares its defaults (whose types are the expected types), for
string options the allowed choices, and the keys that must be positive. ``resolve_hparams``
rejects unknown keys naming the allowed ones, converts CLI strings (``"3"``, ``"0.01"``,
``"true"``) to the default's type, checks choices and signs, and returns the complete set so
that a saved run records every value it used; the learner's ``validate(hp)`` then checks what
involves several keys or another bound. Every failure is a ``ConfigError``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from ..errors import ConfigError
from .base import Learner

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``; ``ConfigError`` naming the key otherwise."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"hyper-parameter {name}={value!r} is not a valid {kind.__name__}") from None


def resolve_hparams(
    learner: str,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    choices: Mapping[str, tuple] | None = None,
    positive: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Defaults overridden by ``given``, validated (see module doc)."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"{learner} has no hyper-parameter(s) {', '.join(unknown)}; allowed: {allowed}")
    hp = dict(defaults)
    hp.update({k: coerce(k, v, defaults[k]) for k, v in given.items()})
    for key, options in (choices or {}).items():
        if hp[key] not in options:
            raise ConfigError(f"{learner}: {key} must be one of {', '.join(map(str, options))}, got {hp[key]!r}")
    bad = [k for k in positive if k in hp and not hp[k] > 0]
    if bad:
        raise ConfigError(f"{learner}: hyper-parameter(s) {', '.join(bad)} must be > 0")
    return hp


class ConfiguredLearner(Learner):
    """A ``Learner`` whose hyper-parameters are declared as class attributes and validated on
    construction: ``defaults`` (every allowed key), ``choices`` and ``positive`` (see
    ``resolve_hparams``), then ``validate``. The validated values are ``self.hp`` (and ``self.hparams``)."""

    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    positive: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        hp = resolve_hparams(self.name, hparams, self.defaults, self.choices, self.positive)
        self.validate(hp)
        super().__init__(backbone, device, **hp)
        self.hp = hp

    def validate(self, hp: dict[str, Any]) -> None:
        """Checks beyond types, choices and ``positive`` (bounds, keys that depend on each other):
        raise ``ConfigError`` naming the key. Subclasses extend it (calling ``super().validate``)."""


def require(learner: str, ok: bool, message: str) -> None:
    """``ConfigError("<learner>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{learner}: {message}")
