"""Image preprocessing in numpy, shared by training and the device runtime.

Images are channels-last: one image ``(H, W)``, ``(H, W, C)`` or a batch
``(N, H, W, C)`` (or a list of images of any sizes), with C in {1, 3, 4}.
``uint8`` holds 0..255 pixels; float arrays hold values in [0, 1]. Output is
``float32`` ``(N, 3, H, W)``, resized with an antialiased bilinear (triangle)
filter and normalised with the manifest's mean/std.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from .errors import InvalidInputError


@lru_cache(maxsize=64)
def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of a bilinear filter widened by the scale when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    sums = w.sum(axis=1, keepdims=True)
    # Edges: a row that lost weight outside the image is renormalised.
    w /= np.where(sums == 0, 1.0, sums)
    return w.astype(np.float32)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float ``(..., H, W, C)`` to ``size=(h, w)``; identity when equal."""
    h, w = image.shape[-3], image.shape[-2]
    if (h, w) == tuple(size):
        return image
    wy = _resize_weights(h, size[0])
    wx = _resize_weights(w, size[1])
    out = np.einsum("oh,...hwc->...owc", wy, image, optimize=True)
    return np.einsum("pw,...owc->...opc", wx, out, optimize=True)


def _to_float_hwc(image: np.ndarray, where: str) -> np.ndarray:
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype in (np.float32, np.float64, np.float16):
        if image.size and not np.all(np.isfinite(image)):
            raise InvalidInputError(f"{where}: image contains NaN or infinite values")
        if image.size and (image.min() < 0.0 or image.max() > 1.0):
            raise InvalidInputError(
                f"{where}: float images must hold values in [0, 1], got range "
                f"[{float(image.min()):.3g}, {float(image.max()):.3g}]; pass uint8 for 0..255 pixels"
            )
        out = image.astype(np.float32)
    else:
        raise InvalidInputError(
            f"{where}: unsupported dtype {image.dtype}; use uint8 (0..255) or float32 (0..1)"
        )
    if out.ndim == 2:
        out = out[..., None]
    c = out.shape[-1]
    if c == 1:
        out = np.repeat(out, 3, axis=-1)
    elif c == 4:
        out = out[..., :3]
    elif c != 3:
        raise InvalidInputError(
            f"{where}: expected channels-last images (H, W, C) with C in 1, 3, 4; "
            f"got shape {tuple(image.shape)}"
        )
    if out.shape[-3] < 1 or out.shape[-2] < 1:
        raise InvalidInputError(f"{where}: empty image of shape {tuple(image.shape)}")
    return out


def as_image_batch(images) -> list[np.ndarray] | np.ndarray:
    """Split input into a float NHWC batch (same-size arrays) or a list of HWC images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            return _to_float_hwc(images, "image")[None]
        if images.ndim == 3:
            raise InvalidInputError(
                f"ambiguous image array of shape {images.shape}: pass (H, W, C) with C in 1, 3, 4 "
                "or a batch (N, H, W, C)"
            )
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise InvalidInputError("empty batch: no images given")
            return _to_float_hwc(images, "images")
        raise InvalidInputError(f"expected 2-4 dimensional image arrays, got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InvalidInputError("empty batch: no images given")
        out = []
        for i, im in enumerate(images):
            arr = np.asarray(im)
            if arr.ndim not in (2, 3):
                raise InvalidInputError(f"image {i}: expected (H, W) or (H, W, C), got shape {arr.shape}")
            out.append(_to_float_hwc(arr, f"image {i}"))
        return out
    raise InvalidInputError(f"expected a numpy array or a list of arrays, got {type(images).__name__}")


def preprocess(
    images,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Images (see module doc) -> normalised float32 ``(N, 3, H, W)``."""
    _, h, w = (int(v) for v in input_size)
    batch = as_image_batch(images)
    if isinstance(batch, list):
        batch = np.stack([resize(im, (h, w)) for im in batch])
    else:
        batch = resize(batch, (h, w))
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    batch = (batch - mean_a) / std_a
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
