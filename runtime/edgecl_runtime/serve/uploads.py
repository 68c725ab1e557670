"""Decoding uploaded images safely: size checked from the header before any pixel is decoded.

A file that is not an image (415; also a HEIC upload without pillow-heif, with
the command that installs it), a truncated or corrupt image (400), or an
image whose header claims more than ``MAX_PIXELS`` pixels (a decompression
bomb, 413) is refused before it costs memory; nothing reaches the bundle.
Images are decoded by ``edgecl_runtime.io`` as training and the CLI decode
them: EXIF orientation applied, transparency composited on white.
"""

from __future__ import annotations

import base64
import struct

import numpy as np

from .. import io as imageio
from ..errors import EdgeclRuntimeError, LimitExceededError, MissingDependencyError
from ..io import NotAnImageError
from .errors import HTTPError, bad_request, too_large, unsupported

MAX_PIXELS = 1 << 24  # 16 Mpixel per uploaded image (a 4096 x 4096 photo)
MAX_IMAGES = 64  # images per request
MAX_REQUEST_PIXELS = 1 << 26  # 64 Mpixel per request (four 16-Mpixel photos): ~200 MB of RGB at most


def _http_error(exc: Exception) -> HTTPError:
    """The HTTP answer to a decoding error of ``edgecl_runtime.io``: 415 not an image (or a format whose
    plugin is missing, e.g. HEIC without pillow-heif), 413 too many pixels, 400 anything else."""
    if isinstance(exc, (NotAnImageError, MissingDependencyError)):
        return unsupported(str(exc))
    if isinstance(exc, LimitExceededError):
        return too_large(str(exc))
    return bad_request(str(exc))


def open_image(data: bytes, what: str = "upload"):
    """Bytes of an image file -> a Pillow image whose header was read (no pixel decoded yet), size checked."""
    try:
        im = imageio.open_image(data, what)
    except EdgeclRuntimeError as exc:
        raise _http_error(exc) from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise too_large(f"{what}: image is {w} x {h} pixels; the limit is {MAX_PIXELS} pixels per image")
    if w < 1 or h < 1:
        raise bad_request(f"{what}: empty image ({w} x {h})")
    return im


def pixels(im, what: str = "upload") -> np.ndarray:
    """Decode an opened image -> uint8 ``(H, W, 3)`` RGB as a viewer shows it (EXIF orientation applied,
    transparency on white: ``edgecl_runtime.io.to_rgb``), or an ``HTTPError`` naming the problem."""
    try:
        return imageio.to_rgb(im)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise bad_request(f"{what}: corrupt or truncated image ({exc})") from None
    finally:
        im.close()


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
