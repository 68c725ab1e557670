"""Data sources: the embedded shapes set, an image folder, or a numpy ``.npz`` file.

``load_dataset(spec)`` returns ``(train, test)`` ``ArrayDataset``s sharing class names:

* ``shapes`` / ``shapes:N`` - the embedded procedural set (N <= 100 classes).
* ``glyphs:N[:within|cross][:SIZE]`` - N characters rendered from matplotlib's fonts
  (``glyphs.py``): ``within`` (default) tests on the training fonts, ``cross`` trains on
  upright fonts and tests on held-out italic ones; SIZE px images (default 64), e.g.
  ``glyphs:200``, ``glyphs:500:cross``, ``glyphs:1000:cross:96``. Generated once, cached.
* ``emoji:N[:within|cross-VENDOR][:SIZE]`` - N emoji drawn by five vendors (``emoji.py``,
  needs the vendors' packages: docs/emoji.md): ``within`` (default) trains and tests on all
  vendors, ``cross-VENDOR`` trains on the four others and tests on VENDOR (twemoji, openmoji,
  noto, emojione, symbola); e.g. ``emoji:100``, ``emoji:100:cross-symbola:64``. Cached.
* ``DIR`` - one sub-folder per class of image files; or ``DIR/train/<class>``
  and ``DIR/test/<class>`` for a fixed split. Files are decoded as viewers show them
  (``edgecl_runtime.io.decode_image``: EXIF orientation, transparency on white); the files a
  class folder holds but that are not read (other types, undecodable; hidden ``.NAME`` files
  aside) are logged as a warning per class and listed in the result's ``unread`` (``FolderSplit``).
* ``wds:DIR`` / ``wds:PATTERN`` - WebDataset tar shards, ``stream:DIR`` - an image folder read batch
  by batch: images stay on disk (``stream.py``, docs/streaming.md).
* ``FILE.npz`` - arrays ``x`` (N, H, W[, C]) uint8 and ``y`` (N,) int, optional
  ``class_names``; or ``x_train``/``y_train``/``x_test``/``y_test``.

Without a fixed split, a seeded stratified ``test_fraction`` of each class is held out.
The generated sets (shapes, glyphs, emoji) take ``train_per_class``, ``test_per_class`` and ``seed``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecl_runtime.errors import EdgeclRuntimeError
from edgecl_runtime.io import IMAGE_SUFFIXES, folder_files, read_image

from .synthetic import make_shapes
from .errors import DataError  # noqa: F401  (re-exported: edgecl.data.DataError)
from .common import class_dirs, fit_image, split_stratified

if TYPE_CHECKING:  # imported where used: glyph generation workers must not import torch
    from .dataset import ArrayDataset

logger = logging.getLogger("edgecl.data")


def _to_uint8_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: expected images (N, H, W) or (N, H, W, C) with C in 1, 3, 4, got {x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.min() >= 0 and x.max() <= 1:
            x = (x * 255 + 0.5).astype(np.uint8)
        else:
            raise DataError(f"{where}: images must be uint8 0..255 or float 0..1, got {x.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


class FolderSplit(tuple):
    """``(train, test)`` of an image folder, and ``unread``: for each class folder with files that were not
    read, its key (the class name; ``train/NAME``, ``test/NAME`` in a fixed split) -> those files' names."""

    def __new__(cls, train, test, unread: dict[str, list[str]]):
        self = super().__new__(cls, (train, test))
        self.unread = unread
        return self


_collectors: ContextVar[tuple[dict, ...]] = ContextVar("edgecl_unread_files", default=())


@contextmanager
def collect_unread():
    """While active, the image folders read (in memory or streamed) add their unread files to the yielded
    dict (class folder key -> file names; see ``FolderSplit``): how ``edgecl train --json`` reports them."""
    found: dict[str, list[str]] = {}
    token = _collectors.set(_collectors.get() + (found,))
    try:
        yield found
    finally:
        _collectors.reset(token)


def report_unread(unread: dict[str, list[str]], reasons: dict[str, dict[str, str]] | None = None) -> None:
    """A warning line per class folder with files not read (``reasons``: class key -> file name -> why it could
    not be decoded; the first one is told), and the files added to the active ``collect_unread`` collectors."""
    for key, files in unread.items():
        first = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        why = next((f"; {n}: {r}" for n, r in (reasons or {}).get(key, {}).items()), "")
        logger.warning(f"{len(files)} file{'s' * (len(files) != 1)} not read in class {key} (first names {first}){why}")
    for found in _collectors.get():
        found.update({key: list(files) for key, files in unread.items()})


def _read_class(folder: Path, image_size: tuple[int, int], unread: list[str], reasons: dict[str, str]) -> list:
    """The images of one class folder, decoded as viewers show them (``edgecl_runtime.io.decode_image``) and
    resized; the names of the files not read (other types, undecodable) are added to ``unread``."""
    files, others = folder_files(folder)
    unread += others
    images = []
    for f in files:
        try:
            images.append(fit_image(read_image(f), image_size))
        except EdgeclRuntimeError as exc:
            unread.append(f.name)
            reasons[f.name] = str(exc)
    unread.sort()
    if not images:
        raise DataError(f"class folder {folder} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                        + (f"; not read: {', '.join(unread[:5])}" if unread else "")
                        + (f" ({next(iter(reasons.values()))})" if reasons else ""))
    return images


def _read_folder(root: Path, names: list[str], image_size: tuple[int, int], prefix: str = ""):
    """``(ArrayDataset, unread)`` of the class folders ``names`` of ``root`` (``unread``: see ``FolderSplit``)."""
    from .dataset import ArrayDataset

    images, labels, unread, reasons = [], [], {}, {}
    for label, name in enumerate(names):
        missed, why = [], {}
        found = _read_class(root / name, image_size, missed, why)
        images += found
        labels += [label] * len(found)
        if missed:
            unread[prefix + name], reasons[prefix + name] = missed, why
    report_unread(unread, reasons)
    return ArrayDataset(np.stack(images), np.asarray(labels, dtype=np.int64), names), unread


def load_image_folder(root: Path, image_size: tuple[int, int], test_fraction: float, seed: int) -> FolderSplit:
    """``(train, test)`` of an image folder (one sub-folder per class, or ``train/`` and ``test/``) with
    ``unread``, the files it did not read (``FolderSplit``; each also logged as a warning)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = class_dirs(root / "train")
        if class_dirs(root / "test") != names:
            raise DataError(f"{root}: train/ and test/ hold different class folders")
        (train, a), (test, b) = (_read_folder(root / s, names, image_size, f"{s}/") for s in ("train", "test"))
        return FolderSplit(train, test, {**a, **b})
    ds, unread = _read_folder(root, class_dirs(root), image_size)
    return FolderSplit(*split_stratified(ds, test_fraction, seed), unread)


def _load_stream(spec: str, image_size: tuple[int, int], seed: int, test_fraction: float):
    """``load_stream``'s ``(train, test)``; for ``stream:DIR`` a ``FolderSplit`` whose unread files are reported."""
    from .stream import folder_unread, load_stream

    split = load_stream(spec, image_size, seed, test_fraction)
    if not spec.startswith("stream:"):
        return split
    unread = folder_unread(Path(spec.partition(":")[2]))
    report_unread(unread)
    return FolderSplit(*split, unread)


def load_npz(path: Path, test_fraction: float, seed: int):
    try:
        z = dict(np.load(path, allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc

    def labels(key):
        y = np.asarray(z[key])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}:{key} must be a 1-d integer array, got {y.dtype} {y.shape}")
        return y.astype(np.int64)

    if {"x_train", "y_train", "x_test", "y_test"} <= z.keys():
        parts = [(_to_uint8_nhwc(z[f"x_{s}"], f"{path}:x_{s}"), labels(f"y_{s}")) for s in ("train", "test")]
    elif {"x", "y"} <= z.keys():
        parts = [(_to_uint8_nhwc(z["x"], f"{path}:x"), labels("y"))]
    else:
        raise DataError(f"{path}: expected arrays x, y (or x_train, y_train, x_test, y_test); found {sorted(z)}")
    n_classes = int(max(int(y.max()) for _, y in parts)) + 1
    names = [str(s) for s in z["class_names"]] if "class_names" in z else [f"class_{i}" for i in range(n_classes)]
    if len(names) < n_classes or len(set(names)) != len(names):
        raise DataError(f"{path}: class_names must be {n_classes} distinct names")
    from .dataset import ArrayDataset

    sets = [ArrayDataset(x, y, names) for x, y in parts]
    return (sets[0], sets[1]) if len(sets) == 2 else split_stratified(sets[0], test_fraction, seed)


def load_dataset(
    spec: str,
    image_size: tuple[int, int] = (32, 32),
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int = 30,
    test_per_class: int = 10,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Resolve a data source spec to ``(train, test)``.

    Specs: ``shapes[:N]``; ``glyphs:N[:within|cross][:SIZE]`` (e.g. ``glyphs:200``,
    ``glyphs:200:cross``, ``glyphs:500:cross:96``); ``emoji:N[:within|cross-VENDOR][:SIZE]``
    (e.g. ``emoji:100:cross-symbola``); an image folder; a ``.npz`` file; ``wds:DIR|PATTERN`` shards or
    ``stream:DIR`` (images stay on disk; see the module doc). ``image_size`` applies to folders; generated sets keep their own size (the
    batch loader resizes to the backbone's input).
    """
    if spec == "glyphs" or spec.startswith("glyphs:"):
        from .glyphs import make_glyphs, parse_spec

        return make_glyphs(parse_spec(spec, train_per_class, test_per_class, seed))
    if spec == "emoji" or spec.startswith("emoji:"):
        from .emoji import make_emoji, parse_spec as parse_emoji

        return make_emoji(parse_emoji(spec, train_per_class, test_per_class, seed))
    if spec.startswith(("wds:", "stream:")):
        return _load_stream(spec, image_size, seed, test_fraction)
    if spec == "shapes" or spec.startswith("shapes:"):
        try:
            n = int(spec.split(":", 1)[1]) if ":" in spec else 100
        except ValueError:
            raise DataError(f"bad spec {spec!r}: use shapes or shapes:N") from None
        try:
            return make_shapes(n, train_per_class, test_per_class, seed=seed)  # 32 px; resized on load
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data source not found: {spec} (use 'shapes', 'glyphs:N', 'emoji:N', 'wds:SHARDS', 'stream:DIR', an image folder or a .npz file)")
    if path.is_dir():
        return load_image_folder(path, image_size, test_fraction, seed)
    if path.suffix == ".npz":
        return load_npz(path, test_fraction, seed)
    raise DataError(f"{spec}: unsupported data source (use 'shapes', 'glyphs:N', 'emoji:N', 'wds:SHARDS', 'stream:DIR', an image folder or a .npz file)")
