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
  and ``DIR/test/<class>`` for a fixed split.
* ``wds:DIR`` / ``wds:PATTERN`` - WebDataset tar shards, ``stream:DIR`` - an image folder read batch
  by batch: images stay on disk (``stream.py``, docs/streaming.md).
* ``FILE.npz`` - arrays ``x`` (N, H, W[, C]) uint8 and ``y`` (N,) int, optional
  ``class_names``; or ``x_train``/``y_train``/``x_test``/``y_test``.

Without a fixed split, a seeded stratified ``test_fraction`` of each class is held out.
The generated sets (shapes, glyphs, emoji) take ``train_per_class``, ``test_per_class`` and ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecl_runtime.io import IMAGE_SUFFIXES, read_image

from .synthetic import make_shapes
from .errors import DataError  # noqa: F401  (re-exported: edgecl.data.DataError)
from .common import class_dirs, fit_image, split_stratified

if TYPE_CHECKING:  # imported where used: glyph generation workers must not import torch
    from .dataset import ArrayDataset


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


def _read_folder(root: Path, names: list[str], image_size: tuple[int, int]) -> ArrayDataset:
    from .dataset import ArrayDataset

    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            images.append(fit_image(read_image(f), image_size))
            labels.append(label)
    return ArrayDataset(np.stack(images), np.asarray(labels, dtype=np.int64), names)


def load_image_folder(root: Path, image_size: tuple[int, int], test_fraction: float, seed: int):
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = class_dirs(root / "train")
        if class_dirs(root / "test") != names:
            raise DataError(f"{root}: train/ and test/ hold different class folders")
        return _read_folder(root / "train", names, image_size), _read_folder(root / "test", names, image_size)
    return split_stratified(_read_folder(root, class_dirs(root), image_size), test_fraction, seed)


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
        from .stream import load_stream

        return load_stream(spec, image_size, seed, test_fraction)
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
