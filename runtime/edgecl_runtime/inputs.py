"""Validation of what a user hands the runtime's update API: class names and image batches.

Checked at the boundary, before anything is computed or written, so a bad
argument raises ``InvalidInputError`` and leaves the bundle exactly as it was.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from . import limits
from .errors import InvalidInputError

MAX_NAME_CHARS = 200
# Control, surrogate, private-use, line/paragraph separators; format characters
# (bidi overrides, zero-width spaces) except the zero-width joiners of emoji.
_BAD_CATEGORIES = {"Cc", "Cs", "Co", "Zl", "Zp", "Cf"}
_ALLOWED_FORMAT = {"\u200c", "\u200d"}


def class_name(name) -> str:
    """A valid class name, NFC-normalised (so visually equal names are the same class).

    Rejected: non-strings, empty or all-space names, surrounding whitespace,
    names that are not encodable as UTF-8 (lone surrogates), control or
    invisible format characters, path-like names (``/``, ``\\``, ``.``, ``..``)
    and names longer than ``MAX_NAME_CHARS``.
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"class name must be a str, got {type(name).__name__}")
    if not name.strip():
        raise InvalidInputError("class name must be a non-empty string")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"class name {name!r} is not valid UTF-8 (lone surrogate)") from None
    if name != name.strip():
        raise InvalidInputError(f"class name {name!r} has surrounding whitespace")
    bad = [c for c in name if unicodedata.category(c) in _BAD_CATEGORIES and c not in _ALLOWED_FORMAT]
    if bad:
        raise InvalidInputError(f"class name {name!r} contains control or invisible characters {bad!r}")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInputError(f"class name {name!r} looks like a path; '/', '\\', '.' and '..' are not allowed")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"class name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}")
    return unicodedata.normalize("NFC", name)


def image_budget(images) -> None:
    """Refuse image batches over the pixel budget (``edgecl_runtime.limits``) before any memory is allocated."""
    if isinstance(images, np.ndarray):
        shapes = [images.shape[-3:-1]] * (images.shape[0] if images.ndim == 4 else 1) if images.ndim >= 3 else [images.shape]
    elif isinstance(images, (list, tuple)):
        try:
            shapes = [np.shape(im)[:2] for im in images]
        except ValueError:  # ragged nested lists: preprocess reports them
            return
    else:
        return  # preprocess reports the type error
    limits.check_pixels(shapes)
