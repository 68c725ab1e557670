"""Reading images from files for the CLI, the serve page and training: image files, or ``.npy`` arrays.

Every image file is decoded by ``decode_image`` (bytes or a path in, uint8 RGB ``(H, W, 3)`` out), so
training, the device runtime and the serve page see the same pixels as a photo viewer:

* the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo stored 40x80 with
  Orientation 6 is read 80x40, as browsers draw it;
* transparency (alpha channels, palette or greyscale/RGB ``tRNS`` transparency) is composited on
  ``BACKGROUND``, white: ``round((c * a + 255 * (255 - a)) / 255)`` per channel;
* 16-bit greyscale (``I;16``, and ``I``) keeps its high byte, as Pillow does for 16-bit RGB(A);
  CMYK, palette and other modes are converted by Pillow;
* HEIC/HEIF files need ``pillow-heif`` (``pip install "edgecl-runtime[heif]"``), registered with
  Pillow on first use; AVIF is Pillow's own (Pillow >= 11.3 wheels).

Pillow is imported only when an image file is read. An image's size is checked against the pixel
budget (``edgecl_runtime.limits``) from its header, before it is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import limits
from .errors import InvalidInputError, LimitExceededError, MissingDependencyError

HEIF_SUFFIXES = {".heic", ".heif", ".hif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".avif",
                  *HEIF_SUFFIXES}
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
HEIF_HINT = 'reading HEIC/HEIF images needs pillow-heif: pip install "edgecl-runtime[heif]"'
AVIF_HINT = "reading AVIF images needs a Pillow with AVIF support: pip install -U pillow (>= 11.3)"
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class NotAnImageError(InvalidInputError):
    """Bytes that no installed Pillow plugin reads as an image."""


@lru_cache(maxsize=1)
def register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once; False when pillow-heif is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _pil():
    """Pillow's ``Image`` module, with the HEIF opener registered when available."""
    try:
        from PIL import Image, ImageFile
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise MissingDependencyError("reading image files needs Pillow: pip install 'edgecl-runtime[image]'") from exc
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image
    register_heif()
    return Image


def _brand(head: bytes) -> bytes:
    """The major brand of an ISO-BMFF file (HEIF, AVIF: ``....ftypBRND``), else b''."""
    return head[8:12] if head[4:8] == b"ftyp" else b""


def _unreadable(head: bytes, where: str) -> Exception:
    """The error for bytes Pillow did not identify: a missing plugin named, else not an image."""
    brand = _brand(head)
    if brand in _HEIF_BRANDS:
        return MissingDependencyError(f"{where}: a HEIC/HEIF image; {HEIF_HINT}")
    if brand in _AVIF_BRANDS:
        return MissingDependencyError(f"{where}: an AVIF image; {AVIF_HINT}")
    return NotAnImageError(f"cannot read image {where}: not an image file Pillow can read "
                           "(PNG, JPEG, GIF, BMP, WebP, TIFF, AVIF, HEIC with pillow-heif, ...)")


def open_image(source: bytes | str | Path, where: str | None = None):
    """An image file (bytes or a path) opened by Pillow: header read, no pixel decoded yet.

    Errors: ``NotAnImageError`` (not an image), ``MissingDependencyError`` (HEIC without pillow-heif),
    ``LimitExceededError`` (Pillow's own decompression-bomb limit), ``InvalidInputError`` (unreadable)."""
    Image = _pil()
    where = where or ("image" if isinstance(source, bytes) else str(source))
    if isinstance(source, bytes):
        if not source:
            raise InvalidInputError(f"cannot read image {where}: empty file")
        fp, head = io.BytesIO(source), source[:12]
    else:
        fp = Path(source)
        if not fp.is_file():
            raise InvalidInputError(f"image file not found: {fp}")
        head = _head(fp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            warnings.filterwarnings("ignore", "Corrupt EXIF", UserWarning)  # the image is read as stored
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise LimitExceededError(f"{where}: image dimensions too large ({exc})") from None
    except Image.UnidentifiedImageError:
        raise _unreadable(head, where) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise InvalidInputError(f"cannot read image {where}: {exc}") from None


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(12)
    except OSError as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from None


def _oriented(im):
    """``im`` turned as its EXIF Orientation tag says (the image itself if 1, absent or unreadable)."""
    from PIL import ImageOps

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Corrupt EXIF", UserWarning)  # read as stored, quietly
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError, TypeError, struct.error):  # a broken EXIF block: as stored
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def composite(rgba: np.ndarray, background=BACKGROUND) -> np.ndarray:
    """uint8 ``(H, W, 4)`` RGBA -> ``(H, W, 3)`` RGB on ``background``: ``round((c*a + bg*(255-a)) / 255)``."""
    a = rgba[..., 3:4].astype(np.uint32)
    bg = np.asarray(background, dtype=np.uint32)
    return ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(im, background=BACKGROUND) -> np.ndarray:
    """A Pillow image -> uint8 ``(H, W, 3)``: decoded, oriented, transparency composited (see module doc)."""
    im.load()
    im = _oriented(im)
    if im.mode in _SIXTEEN_BIT:  # 16-bit greyscale: the high byte, as Pillow reads 16-bit RGB
        grey = (np.asarray(im).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if _has_alpha(im):
        return composite(np.asarray(im.convert("RGBA"), dtype=np.uint8), background)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_image(source: bytes | str | Path, where: str | None = None, budget: list[int] | None = None,
                 background=BACKGROUND) -> np.ndarray:
    """An image file (bytes or a path) -> uint8 ``(H, W, 3)`` RGB as a viewer shows it (see module doc).

    The size is checked against the pixel budget from the header (``budget``: pixels of the call so
    far, updated). Errors are ``InvalidInputError`` s (``open_image``), corrupt data included."""
    where = where or ("image" if isinstance(source, bytes) else str(source))
    with open_image(source, where) as im:
        _charge(budget, [im.size[::-1]], where)
        try:
            return to_rgb(im, background)
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
            raise InvalidInputError(f"cannot read image {where}: corrupt or truncated ({exc})") from None


def read_image(path: str | Path, budget: list[int] | None = None) -> np.ndarray:
    """One image file as a uint8 (H, W, 3) array (``decode_image``); its size is checked against the pixel
    budget from the file's header, before it is decoded (``budget``: pixels of the call so far, updated)."""
    return decode_image(Path(path), str(path), budget)


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


def folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The entries of ``folder``, sorted: image files (by suffix, ``IMAGE_SUFFIXES``) and the names of the
    others (files of other types, and sub-folders as ``NAME/``). Hidden entries (``.NAME``: ``.DS_Store``,
    macOS's ``._IMG_1.jpg`` companions) are in neither."""
    images, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            others.append(p.name + "/" if p.is_dir() else p.name)
    return images, others


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
