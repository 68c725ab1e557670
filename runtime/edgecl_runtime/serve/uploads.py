"""Decoding uploaded images safely: size checked from the header before any pixel is decoded.

A file that is not an image (415), a truncated or corrupt image (400), or an
image whose header claims more than ``MAX_PIXELS`` pixels (a decompression
bomb, 413) is refused before it costs memory; nothing reaches the bundle.
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np

from .errors import bad_request, too_large, unsupported

MAX_PIXELS = 1 << 24  # 16 Mpixel per uploaded image (a 4096 x 4096 photo)
MAX_IMAGES = 64  # images per request
MAX_REQUEST_PIXELS = 1 << 26  # 64 Mpixel per request (four 16-Mpixel photos): ~200 MB of RGB at most


def _pil():
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image
    return Image


def open_image(data: bytes, what: str = "upload"):
    """Bytes of an image file -> a Pillow image whose header was read (no pixel decoded yet), size checked."""
    Image = _pil()
    if not data:
        raise bad_request(f"{what}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise too_large(f"{what}: image dimensions too large ({exc})") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise unsupported(f"{what}: not an image file Pillow can read (PNG, JPEG, GIF, BMP, WebP, ...)") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise too_large(f"{what}: image is {w} x {h} pixels; the limit is {MAX_PIXELS} pixels per image")
    if w < 1 or h < 1:
        raise bad_request(f"{what}: empty image ({w} x {h})")
    return im


def pixels(im, what: str = "upload") -> np.ndarray:
    """Decode an opened image -> uint8 ``(H, W, 3)`` RGB, or an ``HTTPError`` naming the problem."""
    try:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise bad_request(f"{what}: corrupt or truncated image ({exc})") from None


def decode_image(data: bytes, what: str = "upload") -> np.ndarray:
    """Bytes of an image file -> uint8 ``(H, W, 3)`` RGB, or an ``HTTPError`` naming the problem."""
    return pixels(open_image(data, what), what)


def decode_data_url(url: str, what: str) -> np.ndarray:
    """A ``data:image/...;base64,`` URL (what a browser canvas gives) -> uint8 RGB image."""
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise bad_request(f"{what}: expected a data:image/...;base64, URL")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except ValueError:
        raise bad_request(f"{what}: invalid base64") from None
    return decode_image(data, what)


def decode_files(files) -> list[np.ndarray]:
    """Uploaded files (werkzeug ``FileStorage``) -> images; at least one, at most ``MAX_IMAGES``, and at most
    ``MAX_REQUEST_PIXELS`` pixels in all (checked from every header before any pixel is decoded)."""
    if not files:
        raise bad_request("no image uploaded: send one or more files in the multipart field 'image'")
    if len(files) > MAX_IMAGES:
        raise too_large(f"{len(files)} images in one request; the limit is {MAX_IMAGES}")
    whats = [f"upload {f.filename or i!s}" for i, f in enumerate(files)]
    opened = [open_image(f.read(), what) for f, what in zip(files, whats)]
    total = sum(im.size[0] * im.size[1] for im in opened)
    if total > MAX_REQUEST_PIXELS:
        raise too_large(f"{total} pixels in one request; the limit is {MAX_REQUEST_PIXELS} (send fewer or smaller images)")
    return [pixels(im, what) for im, what in zip(opened, whats)]
