"""Parts shared by the in-memory sources (``sources.py``) and the streamed ones (``stream.py``): how an
image folder lists its classes, how a decoded image is resized, and the stratified train/test split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecl_runtime.preprocess import resize

from .errors import DataError

if TYPE_CHECKING:  # imported where used: glyph generation workers must not import torch
    from .dataset import ArrayDataset


def split_stratified(ds: ArrayDataset, test_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)``: a seeded ``test_fraction`` of each class (at least one image, never all) held out."""
    from .dataset import ArrayDataset

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(ds), dtype=bool)
    for c in range(ds.num_classes):
        idx = np.nonzero(ds.labels == c)[0]
        if len(idx) < 2:
            raise DataError(f"class {ds.class_names[c]!r} has {len(idx)} image(s); need at least 2 to split")
        k = min(len(idx) - 1, max(1, int(round(test_fraction * len(idx)))))
        test_mask[rng.permutation(idx)[:k]] = True
    if hasattr(ds, "subset"):  # a StreamDataset: select rows without reading images
        return ds.subset(np.flatnonzero(~test_mask)), ds.subset(np.flatnonzero(test_mask))
    return (
        ArrayDataset(ds.images[~test_mask], ds.labels[~test_mask], ds.class_names),
        ArrayDataset(ds.images[test_mask], ds.labels[test_mask], ds.class_names),
    )


def fit_image(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A decoded uint8 ``(H, W, 3)`` image resized to ``image_size`` as image folders are loaded."""
    return (resize(image.astype(np.float32) / 255.0, image_size) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def class_dirs(root: Path) -> list[str]:
    """The class sub-folders of an image folder, sorted (hidden ones skipped)."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root}: expected one sub-folder per class, found none")
    return names
