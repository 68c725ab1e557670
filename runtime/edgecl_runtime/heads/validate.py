"""Validation of a head file's arrays: every problem is a ``CorruptBundleError`` naming the array.

Heads call ``float_array`` / ``int_array`` / ``scalar`` in ``from_arrays`` so a
head file with a missing array, a wrong shape, a non-numeric dtype or a NaN is
refused with a message that says which array and why, before anything uses it.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptBundleError


def _get(arrays: dict[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    if name not in arrays:
        raise CorruptBundleError(f"{kind} head file lacks array {name!r}")
    return np.asarray(arrays[name])


def _check_shape(a: np.ndarray, name: str, kind: str, shape: tuple) -> None:
    # ``None`` in ``shape`` matches any length.
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise CorruptBundleError(f"{kind} head array {name!r} has shape {a.shape}, expected {want}")


def float_array(arrays: dict[str, np.ndarray], name: str, kind: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """Array ``name`` of floating dtype, the given shape and finite values, cast to ``dtype`` (``None``: kept)."""
    a = _get(arrays, name, kind)
    if not np.issubdtype(a.dtype, np.floating):
        raise CorruptBundleError(f"{kind} head array {name!r} has dtype {a.dtype}, expected a float dtype")
    _check_shape(a, name, kind, shape)
    if not np.all(np.isfinite(a)):
        raise CorruptBundleError(f"{kind} head array {name!r} holds non-finite values")
    return a if dtype is None else a.astype(dtype, copy=False)


def int_array(arrays: dict[str, np.ndarray], name: str, kind: str, shape: tuple, minimum: int | None = None) -> np.ndarray:
    """Integer array ``name`` of the given shape, every value ``>= minimum``, as int64."""
    a = _get(arrays, name, kind)
    if not np.issubdtype(a.dtype, np.integer):
        raise CorruptBundleError(f"{kind} head array {name!r} has dtype {a.dtype}, expected an integer dtype")
    _check_shape(a, name, kind, shape)
    if minimum is not None and a.size and a.min() < minimum:
        raise CorruptBundleError(f"{kind} head array {name!r} holds values < {minimum}")
    return a.astype(np.int64, copy=False)


def scalar(arrays: dict[str, np.ndarray], name: str, kind: str, positive: bool = False) -> float:
    """A finite float scalar (0-d array) ``name``; ``positive`` requires ``> 0``."""
    a = float_array(arrays, name, kind, ())
    value = float(a)
    if positive and not value > 0:
        raise CorruptBundleError(f"{kind} head array {name!r} must be > 0, got {value}")
    return value
