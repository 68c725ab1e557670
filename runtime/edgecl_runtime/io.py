"""Reading example images from files for the CLI: ``.npy`` arrays or image files.

Image files need Pillow, imported only when one is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from . import limits
from .errors import InvalidInputError, LimitExceededError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def read_image(path: str | Path, budget: list[int] | None = None) -> np.ndarray:
    """One image file as a uint8 (H, W, 3) array; its size is checked against the pixel budget from the
    file's header, before it is decoded (``budget``: pixels of the call so far, updated)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"image file not found: {path}")
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise InvalidInputError("reading image files needs Pillow: pip install 'edgecl-runtime[image]'") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            with Image.open(path) as im:
                _charge(budget, [im.size[::-1]], str(path))
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise LimitExceededError(f"{path}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc


def _charge(budget: list[int] | None, sizes: list, where: str) -> None:
    """Check ``sizes`` ((H, W) each) against the per-image and per-call pixel budgets."""
    limits.check_pixels(sizes, where)
    if budget is not None:
        budget[0] += sum(int(h) * int(w) for h, w in sizes)
        if budget[0] > limits.MAX_BATCH_PIXELS:
            raise LimitExceededError(
                f"the images hold more than {limits.MAX_BATCH_PIXELS} pixels together, the limit per call "
                "(edgecl_runtime.limits.MAX_BATCH_PIXELS, env EDGECL_MAX_BATCH_PIXELS)"
            )


def read_array(path: Path, budget: list[int] | None = None) -> np.ndarray:
    """An ``.npy`` file of one image or a batch, its shape checked against the pixel budget before loading."""
    if not path.is_file():
        raise InvalidInputError(f"array file not found: {path}")
    try:
        with open(path, "rb") as f:
            shape, dtype = limits.npy_header(f)
        if dtype.hasobject:
            raise ValueError("object arrays are not images")
        _charge(budget, [s[:2] for s in limits.npy_image_sizes(shape)], str(path))
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"cannot read array file {path}: {exc}") from exc


def read_images(paths) -> list[np.ndarray]:
    """Images from files: image files give one image, ``.npy`` files one (H,W,C) or a batch (N,H,W,C)."""
    out: list[np.ndarray] = []
    budget = [0]
    for p in map(Path, paths):
        if p.suffix.lower() == ".npy":
            arr = read_array(p, budget)
            out.extend(list(arr) if arr.ndim == 4 else [arr])
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(read_image(p, budget))
        else:
            raise InvalidInputError(f"{p}: unsupported file type (use an image file or a .npy array)")
    if not out:
        raise InvalidInputError("no images given")
    return out
