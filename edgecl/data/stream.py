"""Data sets whose images stay on disk: WebDataset tar shards and streamed image folders.

``load_stream(spec)`` returns ``(train, test)`` ``StreamDataset``s: ``ArrayDataset``s whose ``images``
is a ``StreamImages``, a lazy ``(N, H, W, 3)`` uint8 array that reads, decodes and resizes only the rows
it is indexed with (``images[rows]``). Labels (8 bytes a row) and the shard index are in memory;
pixels never are beyond one batch, so the batch loader, the embedding service (which embeds a
split once into a memory-mapped cache file) and evaluation work unchanged and in flat memory.

Specs (also accepted by ``edgecl.data.load_dataset`` and ``edgecl train --dataset``):

* ``wds:DIR`` - shards ``DIR/train-*.tar`` and ``DIR/test-*.tar`` (what ``edgecl data shards``
  writes), class names from ``DIR/classes.json``.
* ``wds:PATTERN`` - the shards of a brace pattern or glob (``/data/shards-{000000..000009}.tar``),
  a seeded stratified ``test_fraction`` of each class held out (as for image folders).
* ``stream:DIR`` - an image folder (one sub-folder per class, or ``train/`` and ``test/``), its files
  read when a batch needs them instead of all at load time.

Images are decoded to RGB by ``edgecl_runtime.io.decode_image`` (EXIF orientation applied, transparency
composited on white) and resized to ``image_size`` exactly as the in-memory image folder does
(``edgecl.data.common.fit_image``), so a streamed source gives the same pixels, and the same
embeddings, as loading it into memory. A streamed folder's files of other types are reported
(``folder_unread``; ``load_dataset`` logs them); an image file that does not decode fails the
batch that reads it (``DataError``), as it is met only then.

Rank split: ``load_stream(..., rank=r, world_size=w)`` keeps the training shards ``shards[r::w]``
(a streamed folder: training rows ``r::w``), so that each process of a multi-process job opens only
its own files; the test split of ``wds:DIR`` is not split. The default (0, 1) keeps everything, which
is what ``edgecl.distributed`` expects: it splits a data set's rows across ranks itself (row ``i`` to
rank ``i % w``), and a streamed set reads only the rows a rank embeds. Use one split or the other,
never both (docs/streaming.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgecl_runtime.errors import EdgeclRuntimeError
from edgecl_runtime.io import IMAGE_SUFFIXES, folder_files
from edgecl_runtime.io import decode_image as io_decode

from .common import class_dirs, fit_image, split_stratified
from .dataset import ArrayDataset
from .errors import DataError
from .shards import ShardIndex, read_class_names, shard_urls

PREFIXES = ("wds:", "stream:")


class Source(Protocol):
    """Encoded images by row and a fingerprint of the files they come from."""

    def read(self, rows: np.ndarray) -> list[bytes]: ...

    def fingerprint(self) -> str: ...

    def where(self, row: int) -> str: ...


def file_stamp(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


class ShardSource:
    def __init__(self, index: ShardIndex):
        self.index = index

    def read(self, rows: np.ndarray) -> list[bytes]:
        return self.index.read(rows)

    def fingerprint(self) -> str:
        return "|".join(file_stamp(s) for s in self.index.shards)

    def where(self, row: int) -> str:
        return f"{self.index.shards[int(self.index.shard[row])]} (image at byte {int(self.index.offset[row])})"


class FileSource:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def read(self, rows: np.ndarray) -> list[bytes]:
        try:
            return [Path(self.paths[int(r)]).read_bytes() for r in rows]
        except OSError as exc:
            raise DataError(f"cannot read image: {exc}") from exc

    def fingerprint(self) -> str:
        return "|".join(file_stamp(p) for p in self.paths)

    def where(self, row: int) -> str:
        return self.paths[int(row)]


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 ``(H, W, 3)`` as viewers show them (``edgecl_runtime.io.decode_image``:
    EXIF orientation applied, transparency on white), ``DataError`` naming ``where`` if unreadable."""
    try:
        return io_decode(data, where)
    except EdgeclRuntimeError as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from exc


class StreamImages:
    """Lazy uint8 images ``(N, H, W, 3)``: row ``i`` is ``source`` row ``rows[i]``, decoded and resized to
    ``size`` when indexed. ``subset`` selects rows without reading; ``cache_key`` identifies the pixels."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, source: Source, rows: np.ndarray, size: tuple[int, int]):
        self.source, self.rows, self.size = source, np.asarray(rows, dtype=np.int64), tuple(int(s) for s in size)
        self._key: str | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), *self.size, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        rows = np.atleast_1d(self.rows[idx])
        images = [fit_image(decode_image(data, self.source.where(r)), self.size)
                  for r, data in zip(rows, self.source.read(rows))]
        out = np.stack(images) if images else np.zeros((0, *self.size, 3), np.uint8)
        return out[0] if np.ndim(idx) == 0 and not isinstance(idx, slice) else out

    def __array__(self, dtype=None, copy=None):
        raise TypeError("StreamImages are read by rows (images[rows]); converting all of them to one array "
                        "would load the whole data set into memory")

    def subset(self, idx) -> "StreamImages":
        return StreamImages(self.source, self.rows[idx], self.size)

    @property
    def cache_key(self) -> str:
        """Digest of the source files (path, size, mtime), the rows and the size: the embedding cache's data key."""
        if self._key is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"stream-v2:{self.size}:{type(self.source).__name__}:{self.source.fingerprint()};".encode())
            h.update(np.ascontiguousarray(self.rows).data)
            self._key = h.hexdigest()
        return self._key


@dataclass
class StreamDataset(ArrayDataset):
    """An ``ArrayDataset`` whose ``images`` is a ``StreamImages`` (selections stay lazy)."""

    def select_classes(self, classes) -> "StreamDataset":
        idx = self.class_indices(classes)
        return StreamDataset(self.images.subset(idx), self.labels[idx], self.class_names)

    def subset(self, idx) -> "StreamDataset":
        return StreamDataset(self.images.subset(idx), self.labels[idx], self.class_names)

    def relabel(self, order) -> "StreamDataset":
        out = ArrayDataset.relabel(self, order)
        return StreamDataset(out.images, out.labels, out.class_names)


def load_stream(spec: str, image_size: tuple[int, int], seed: int = 0, test_fraction: float = 0.2,
                rank: int = 0, world_size: int = 1) -> tuple[StreamDataset, StreamDataset]:
    """Resolve a ``wds:`` or ``stream:`` spec to ``(train, test)`` (see module doc)."""
    kind, _, target = spec.partition(":")
    if not target:
        raise DataError(f"bad spec {spec!r}: use wds:DIR, wds:PATTERN or stream:DIR")
    size = (int(image_size[0]), int(image_size[1]))
    if kind == "stream":
        return _folder(Path(target), size, seed, test_fraction, rank, world_size)
    root = Path(target)
    if root.is_dir() and any(root.glob("train-*.tar")):
        train = _shards(str(root / "train-*.tar"), size, rank, world_size)
        test = _shards(str(root / "test-*.tar"), size, 0, 1, train.class_names)
        return train, test
    return split_stratified(_shards(target, size, rank, world_size), test_fraction, seed)


def _shards(pattern: str, size, rank: int, world_size: int, names: list[str] | None = None) -> StreamDataset:
    index = ShardIndex.scan(shard_urls(pattern, rank, world_size))
    if names is None:
        names = read_class_names(index.shards, int(index.labels.max()) + 1)
    if index.labels.max() >= len(names):
        raise DataError(f"{pattern}: label {int(index.labels.max())} but {len(names)} class names")
    return StreamDataset(StreamImages(ShardSource(index), np.arange(len(index.labels)), size), index.labels, names)


def _folder(root: Path, size, seed: int, test_fraction: float, rank: int, world_size: int):
    if not root.is_dir():
        raise DataError(f"stream:{root}: not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = class_dirs(root / "train")
        if class_dirs(root / "test") != names:
            raise DataError(f"{root}: train/ and test/ hold different class folders")
        train, test = _file_list(root / "train", names, size), _file_list(root / "test", names, size)
    else:
        train, test = split_stratified(_file_list(root, class_dirs(root), size), test_fraction, seed)
    return train.subset(np.arange(len(train))[rank::world_size]), test


def _file_list(root: Path, names: list[str], size) -> StreamDataset:
    paths, labels = [], []
    for label, name in enumerate(names):
        files = [str(p) for p in folder_files(root / name)[0]]
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [label] * len(files)
    return StreamDataset(StreamImages(FileSource(paths), np.arange(len(paths)), size),
                         np.asarray(labels, dtype=np.int64), names)


def folder_unread(root: Path) -> dict[str, list[str]]:
    """The files of a ``stream:DIR`` folder's classes that are not image files (class key -> names, keyed as
    ``edgecl.data.sources.FolderSplit.unread``); an image file that does not decode fails its batch instead."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        folders = {f"{s}/{n}": root / s / n for s in ("train", "test") for n in class_dirs(root / s)}
    else:
        folders = {n: root / n for n in class_dirs(root)}
    unread = {key: folder_files(folder)[1] for key, folder in folders.items()}
    return {key: names for key, names in unread.items() if names}


def encoded_samples(ds: ArrayDataset, chunk: int = 256):
    """``(ext, image bytes, label)`` of every row of ``ds``: a streamed folder's files as they are (no
    re-encoding), anything else encoded as PNG (lossless) ``chunk`` rows at a time."""
    from .shards import encode_png

    images = ds.images
    if isinstance(images, StreamImages) and isinstance(images.source, FileSource):
        for i, r in enumerate(images.rows):
            path = images.source.paths[int(r)]
            yield Path(path).suffix.lower().lstrip("."), images.source.read(np.array([r]))[0], int(ds.labels[i])
        return
    for start in range(0, len(ds), chunk):
        rows = np.arange(start, min(start + chunk, len(ds)))
        for image, label in zip(images[rows], ds.labels[rows]):
            yield "png", encode_png(image), int(label)


def write_split_shards(train: ArrayDataset, test: ArrayDataset, out_dir: str | Path, per_shard: int) -> dict:
    """Write ``train-NNNNNN.tar``, ``test-NNNNNN.tar`` and ``classes.json`` to ``out_dir`` (the ``wds:DIR``
    layout); refuses a folder that already holds shards. Returns the shard paths and counts."""
    from .shards import write_class_names, write_shards

    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.tar")):
        raise DataError(f"{out} already holds .tar shards; write to an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    report = {"out_dir": str(out), "classes": len(train.class_names)}
    for name, ds in (("train", train), ("test", test)):
        report[name] = {"samples": len(ds), "shards": write_shards(encoded_samples(ds), str(out / f"{name}-%06d.tar"),
                                                                    per_shard)}
    write_class_names(out, list(train.class_names))
    return report
