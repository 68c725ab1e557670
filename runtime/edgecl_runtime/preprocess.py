"""Image preprocessing in numpy, shared by training and the device runtime.

Images are channels-last: one image ``(H, W)``, ``(H, W, C)`` or a batch
``(N, H, W, C)`` (or a list of images of any sizes), with C in {1, 3, 4}
(a 4th channel of an array is dropped: arrays are taken as pixels, not as files).
``uint8`` holds 0..255 pixels; float arrays hold values in [0, 1]. PIL images
and image file paths (``str`` / ``os.PathLike``), alone or in a list, are read
as uint8 RGB arrays first (``load_images``, through ``edgecl_runtime.io``: EXIF
orientation applied, transparency composited on white; Pillow is needed only then). Output is
``float32`` ``(N, 3, H, W)``, resized with an antialiased bilinear (triangle)
filter and normalised with the manifest's mean/std.

Speed (it runs before every prediction, so it must not cost more than the
model): the resize filter is applied separably as a few *taps* per output
pixel (gathers + multiply-adds, O(output x taps)) instead of a dense
(out x in) matrix product, a same-size batch is resized in one go, and uint8
pixels are converted to float only after resizing, into one preallocated
NCHW buffer that the normalisation updates in place. Without a resize the
arithmetic is exactly the reference ``(x / 255 - mean) / std``; with one,
results equal the dense filter to float32 rounding (~1e-6).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np

from .errors import InvalidInputError


CHUNK_VALUES = 1 << 20
DENSE_MAX_IN = 64


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


@lru_cache(maxsize=64)
def _resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero entries of ``_resize_weights`` as ``(taps, n_out)`` source indices and weights."""
    w = _resize_weights(n_in, n_out)
    nz = w != 0
    k = max(int(nz.sum(axis=1).max()), 1)
    first = np.argmax(nz, axis=1)
    idx = np.minimum(first[None, :] + np.arange(k)[:, None], n_in - 1)  # (k, n_out), contiguous support
    weights = np.take_along_axis(w, idx.T, axis=1).T.copy()
    weights[first[None, :] + np.arange(k)[:, None] > n_in - 1] = 0.0  # clipped taps weigh nothing
    return idx, weights.astype(np.float32)


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Filter ``x`` along ``axis`` to ``n_out`` samples: sum over taps of gathered rows x weights."""
    if axis == x.ndim - 1 and x.shape[axis] <= DENSE_MAX_IN:  # short rows: one BLAS product beats gathers
        return np.matmul(x.astype(np.float32, copy=False), _resize_weights(x.shape[axis], n_out).T)
    idx, w = _resize_taps(x.shape[axis], n_out)
    shape = list(x.shape)
    shape[axis] = n_out
    wshape = [1] * x.ndim
    wshape[axis] = n_out
    out = np.empty(shape, np.float32)
    gathered = np.empty(shape, x.dtype)
    term = np.empty(shape, np.float32)
    np.take(x, idx[0], axis=axis, out=gathered)
    np.multiply(gathered, w[0].reshape(wshape), out=out)  # uint8 * float32 -> float32
    for t in range(1, idx.shape[0]):
        np.take(x, idx[t], axis=axis, out=gathered)
        np.multiply(gathered, w[t].reshape(wshape), out=term)
        out += term
    return out


def _resize_chw(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize channels-first ``(..., H, W)``; the taps then multiply long contiguous rows."""
    h, w = image.shape[-2], image.shape[-1]
    if (h, w) == tuple(size):
        return image
    out = image
    # shrink the axis that loses most first: the second pass then works on fewer pixels
    order = (-2, -1) if size[0] / h <= size[1] / w else (-1, -2)
    for axis in order:
        n_out = size[0] if axis == -2 else size[1]
        if out.shape[axis] != n_out:
            out = _resize_axis(out, n_out, out.ndim + axis)
    return out.astype(np.float32, copy=False)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(..., H, W, C)`` (float, or uint8 giving float 0..255) to ``size=(h, w)``; identity when equal."""
    if image.shape[-3:-1] == tuple(size):
        return image
    return np.moveaxis(_resize_chw(np.ascontiguousarray(np.moveaxis(image, -1, -3)), size), -3, -1)


def _as_hwc3(image: np.ndarray, where: str) -> np.ndarray:
    """Validated ``(..., H, W, 3)``: uint8 kept as is (converted after resizing), floats as float32."""
    if image.dtype == np.uint8:
        out = image
    elif image.dtype in (np.float32, np.float64, np.float16):
        if image.size and not np.all(np.isfinite(image)):
            raise InvalidInputError(f"{where}: image contains NaN or infinite values")
        if image.size and (image.min() < 0.0 or image.max() > 1.0):
            raise InvalidInputError(
                f"{where}: float images must hold values in [0, 1], got range "
                f"[{float(image.min()):.3g}, {float(image.max()):.3g}]; pass uint8 for 0..255 pixels"
            )
        out = image.astype(np.float32, copy=False)
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


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _load_one(item) -> list:
    """One item of ``load_images``: a path gives its image(s) (a ``.npy`` file may hold a batch)."""
    if isinstance(item, (str, os.PathLike)):
        from .io import read_images

        return read_images([item])
    if _is_pil(item):
        from .io import to_rgb

        return [to_rgb(item)]
    return [item]


def load_images(images):
    """PIL images and image file paths, alone or in a list, read as uint8 ``(H, W, 3)`` arrays.

    Arrays and lists of arrays are returned unchanged; a single PIL image or a
    single image path gives one ``(H, W, 3)`` array, a list gives a list.
    """
    if isinstance(images, (list, tuple)):
        if not any(isinstance(im, (str, os.PathLike)) or _is_pil(im) for im in images):
            return images
        return [arr for im in images for arr in _load_one(im)]
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        loaded = _load_one(images)
        return loaded[0] if len(loaded) == 1 else loaded
    return images


def _split(images) -> list[np.ndarray] | np.ndarray:
    """Validated NHWC batch (same-size arrays) or list of HWC images, in their own dtype (uint8 / float32)."""
    images = load_images(images)
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            return _as_hwc3(images, "image")[None]
        if images.ndim == 3:
            raise InvalidInputError(
                f"ambiguous image array of shape {images.shape}: pass (H, W, C) with C in 1, 3, 4 "
                "or a batch (N, H, W, C)"
            )
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise InvalidInputError("empty batch: no images given")
            return _as_hwc3(images, "images")
        raise InvalidInputError(f"expected 2-4 dimensional image arrays, got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InvalidInputError("empty batch: no images given")
        out = []
        for i, im in enumerate(images):
            arr = np.asarray(im)
            if arr.ndim not in (2, 3):
                raise InvalidInputError(f"image {i}: expected (H, W) or (H, W, C), got shape {arr.shape}")
            out.append(_as_hwc3(arr, f"image {i}"))
        return out
    raise InvalidInputError(f"expected a numpy array or a list of arrays, got {type(images).__name__}")


def _normalise_into(xt: np.ndarray, in_255: bool, mean: np.ndarray, std: np.ndarray, out: np.ndarray) -> None:
    """``out`` (N, 3, H, W) = ``(x / 255 - mean) / std`` (``x / 255`` only if ``in_255``) from NCHW ``xt``, in place."""
    if in_255:
        np.divide(xt, np.float32(255.0), out=out, dtype=np.float32)
    else:
        np.copyto(out, xt)
    np.subtract(out, mean[:, None, None], out=out)
    np.divide(out, std[:, None, None], out=out)


def preprocess(
    images,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Images (see module doc) -> normalised float32 ``(N, 3, H, W)``."""
    _, h, w = (int(v) for v in input_size)
    batch = _split(images)
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    if isinstance(batch, list):
        items, n = batch, len(batch)
    else:  # chunks of ~1M values: temporaries stay in cache instead of page-faulting fresh memory
        n = batch.shape[0]
        step = max(1, CHUNK_VALUES // (3 * max(batch.shape[1] * batch.shape[2], h * w)))
        items = [batch] if batch.shape[1:3] == (h, w) else [batch[i : i + step] for i in range(0, n, step)]
    out = np.empty((n, 3, h, w), dtype=np.float32)
    i = 0
    for im in items:
        im4 = im if im.ndim == 4 else im[None]
        # uint8 stays 0..255 through the resize and is scaled with the normalisation
        chw = im4.transpose(0, 3, 1, 2)
        if chw.shape[-2:] != (h, w):  # gathers along contiguous rows are several times faster
            chw = _resize_chw(np.ascontiguousarray(chw), (h, w))
        _normalise_into(chw, im.dtype == np.uint8, mean_a, std_a, out[i : i + im4.shape[0]])
        i += im4.shape[0]
    return out
