"""Reading example images from files for the CLI: ``.npy`` arrays or image files.

Image files need Pillow, imported only when one is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InvalidInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def read_image(path: str | Path) -> np.ndarray:
    """One image file as a uint8 (H, W, 3) array."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"image file not found: {path}")
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise InvalidInputError("reading image files needs Pillow: pip install 'edgecl-runtime[image]'") from exc
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc


def read_images(paths) -> list[np.ndarray]:
    """Images from files: image files give one image, ``.npy`` files one (H,W,C) or a batch (N,H,W,C)."""
    out: list[np.ndarray] = []
    for p in map(Path, paths):
        if p.suffix.lower() == ".npy":
            if not p.is_file():
                raise InvalidInputError(f"array file not found: {p}")
            try:
                arr = np.load(p, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InvalidInputError(f"cannot read array file {p}: {exc}") from exc
            out.extend(list(arr) if arr.ndim == 4 else [arr])
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(read_image(p))
        else:
            raise InvalidInputError(f"{p}: unsupported file type (use an image file or a .npy array)")
    if not out:
        raise InvalidInputError("no images given")
    return out
