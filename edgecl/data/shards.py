"""Tar shards in the WebDataset format: writing them, listing them, and indexing them for random access.

A shard is an uncompressed POSIX tar file whose members are grouped into samples by key: the member
``KEY.EXT`` holds field ``EXT`` of sample ``KEY`` (the key is the member's name up to the first dot
of its base name), and a sample's members are consecutive. An edgecl image sample has one image
member (``png``, ``jpg``, ``heic``, ... : any suffix of ``edgecl_runtime.io.IMAGE_SUFFIXES``) and ``cls``,
its integer class index as decimal text. Image bytes are decoded where a batch reads them
(``edgecl.data.stream.decode_image``, i.e. ``edgecl_runtime.io.decode_image``: EXIF orientation applied,
transparency composited on white, HEIC through pillow-heif), never here. ``classes.json`` beside the shards (a JSON list) names the classes;
without it class ``i`` is ``class_i``. This is the layout ``webdataset.ShardWriter`` writes and
``webdataset.WebDataset(...).decode("rgb8").to_tuple("png", "cls")`` reads.

Writing goes through the ``webdataset`` package (``ShardWriter``: ``pip install 'edgecl[stream]'``).
Reading uses ``ShardIndex``, a reader of the same format with random access: it scans each shard's tar
headers once (the image bytes are not read), recording for every sample the byte offset and size of
its image and its label, so any row can be read with one ``pread``. The protocol's task split, the
shuffled batches of gradient-trained learners and the embedding cache need rows by index, which the
WebDataset streaming pipeline does not give. Compressed shards (``.tar.gz``) cannot be read at an offset
and are refused with a ``DataError``.

``shard_urls(pattern, rank, world_size)`` expands a brace pattern (``shards-{000000..000009}.tar``),
a glob or a directory to the sorted shard list and keeps every ``world_size``-th shard from ``rank``
(the per-rank split a ``torch.distributed`` run uses; see docs/streaming.md).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgecl_runtime.io import IMAGE_SUFFIXES

from .errors import DataError

CLASSES_FILE = "classes.json"
IMAGE_EXTS = {s.lstrip(".") for s in IMAGE_SUFFIXES}


def split_member(name: str) -> tuple[str, str]:
    """``(key, ext)`` of a tar member name, as WebDataset groups them (first dot of the base name)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def expand(pattern: str) -> list[str]:
    """The files a shard pattern names: a directory (its ``*.tar``), brace ranges, or a glob."""
    try:
        from braceexpand import braceexpand
    except ImportError as exc:
        raise DataError("reading shards needs braceexpand: pip install 'edgecl[stream]'") from exc

    if os.path.isdir(pattern):
        return sorted(glob.glob(os.path.join(pattern, "*.tar")))
    out: list[str] = []
    for item in braceexpand(pattern):
        out.extend(sorted(glob.glob(item)) if glob.has_magic(item) else [item])
    return out


def shard_urls(pattern: str, rank: int = 0, world_size: int = 1) -> list[str]:
    """The existing shards of ``pattern``, every ``world_size``-th from ``rank`` (see module doc)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank must lie in [0, {world_size}) with world_size >= 1, got rank {rank}")
    shards = expand(pattern)
    if not shards:
        raise DataError(f"no shards match {pattern!r}")
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise DataError(f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    compressed = [s for s in shards if not s.endswith(".tar")]
    if compressed:
        raise DataError(f"{compressed[0]}: only uncompressed .tar shards can be read by row (re-write it with "
                        "`edgecl data shards`)")
    mine = shards[rank::world_size]
    if not mine:
        raise DataError(f"{len(shards)} shard(s) for {world_size} ranks: rank {rank} gets none (write more shards)")
    return mine


def read_class_names(shards: list[str], num_labels: int) -> list[str]:
    """``classes.json`` beside the first shard, else ``class_0 .. class_{num_labels-1}``."""
    path = Path(shards[0]).parent / CLASSES_FILE
    if not path.is_file():
        return [f"class_{i}" for i in range(num_labels)]
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(names, list) or len(set(map(str, names))) != len(names) or len(names) < num_labels:
        raise DataError(f"{path}: expected a list of at least {num_labels} distinct class names")
    return [str(n) for n in names]


@dataclass
class ShardIndex:
    """Where each sample's image lies: shard number, byte offset and size in that shard, and its label."""

    shards: list[str]
    shard: np.ndarray  # int32 (N,)
    offset: np.ndarray  # int64 (N,)
    size: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)

    @classmethod
    def scan(cls, shards: list[str]) -> "ShardIndex":
        cols = [array("q") for _ in range(4)]  # 8 bytes a value while scanning (not a Python int each)
        for i, path in enumerate(shards):
            for offset, size, label in scan_shard(path):
                for col, v in zip(cols, (i, offset, size, label)):
                    col.append(v)
        if not cols[0]:
            raise DataError(f"the shards hold no samples: {shards[0]}" + (" ..." if len(shards) > 1 else ""))
        shard, offset, size, labels = (np.frombuffer(c, dtype=np.int64).copy() for c in cols)
        return cls(shards, shard.astype(np.int32), offset, size, labels)

    def read(self, rows: np.ndarray) -> list[bytes]:
        """The encoded image bytes of ``rows`` (one ``pread`` each, one open per shard touched)."""
        out: list[bytes] = [b""] * len(rows)
        order = np.argsort(self.shard[rows], kind="stable")
        fds: dict[int, int] = {}
        try:
            for j in order:
                r = int(rows[j])
                s = int(self.shard[r])
                if s not in fds:
                    fds[s] = os.open(self.shards[s], os.O_RDONLY)
                out[j] = os.pread(fds[s], int(self.size[r]), int(self.offset[r]))
                if len(out[j]) != self.size[r]:
                    raise DataError(f"{self.shards[s]}: truncated (sample at byte {self.offset[r]})")
        except OSError as exc:
            raise DataError(f"cannot read shard: {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)
        return out


def scan_shard(path: str) -> Iterator[tuple[int, int, int]]:
    """``(image offset, image size, label)`` of each sample of one shard, in order; ``DataError`` names
    the shard (and sample) if it is not a readable tar of image + ``cls`` samples."""
    try:
        size = os.path.getsize(path)
        with tarfile.open(path, "r:") as tar:
            yield from _samples(tar, path, size)
            _check_end(tar, path, size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable WebDataset shard ({type(exc).__name__}: {exc})") from exc


def _samples(tar: tarfile.TarFile, path: str, file_size: int) -> Iterator[tuple[int, int, int]]:
    key, image, label = None, None, None
    for member in tar:
        if not member.isfile():
            continue
        k, ext = split_member(member.name)
        if k != key:
            if key is not None:
                yield _sample(path, key, image, label)
            key, image, label = k, None, None
        if member.offset_data + member.size > file_size:
            raise DataError(f"{path}: truncated (member {member.name!r} ends past the end of the file)")
        if ext in IMAGE_EXTS:
            image = (member.offset_data, member.size)
        elif ext == "cls":
            label = _label(tar.extractfile(member).read(), path, k)
    if key is not None:
        yield _sample(path, key, image, label)


END_SLACK = 1 << 16


def _check_end(tar: tarfile.TarFile, path: str, file_size: int) -> None:
    """tarfile stops quietly at a damaged header after the first: what follows the last member must be
    the archive's zero padding, else the shard is corrupt."""
    rest = file_size - tar.offset
    if rest <= 0:
        return
    tar.fileobj.seek(tar.offset)
    if rest > END_SLACK or tar.fileobj.read(rest).strip(b"\0"):
        raise DataError(f"{path}: corrupt tar header at byte {tar.offset} (the samples after it cannot be read)")


def _label(raw: bytes, path: str, key: str) -> int:
    try:
        value = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{path}: sample {key!r} has a cls that is not an integer: {raw[:20]!r}") from None
    if value < 0:
        raise DataError(f"{path}: sample {key!r} has a negative cls {value}")
    return value


def _sample(path: str, key: str, image, label) -> tuple[int, int, int]:
    if image is None or label is None:
        raise DataError(f"{path}: sample {key!r} lacks {'an image' if image is None else 'a cls'} member "
                        f"(expected KEY.png/.jpg/... and KEY.cls)")
    return image[0], image[1], label


def encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(samples: Iterable[tuple[str, bytes, int]], pattern: str, per_shard: int) -> list[str]:
    """Write ``(ext, encoded image, label)`` samples to shards ``pattern % i`` (``i`` = 0, 1, ...) of at most
    ``per_shard`` samples each, with ``webdataset.ShardWriter``; returns the shard paths written."""
    if per_shard < 1:
        raise DataError(f"per_shard must be >= 1, got {per_shard}")
    try:
        import webdataset as wds
    except ImportError as exc:
        raise DataError("writing shards needs the webdataset package: pip install 'edgecl[stream]'") from exc
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0, mtime=0.0) as sink:
        for i, (ext, data, label) in enumerate(samples):
            if ext not in IMAGE_EXTS:
                raise DataError(f"sample {i}: image type {ext!r} is not one of {sorted(IMAGE_EXTS)}")
            sink.write({"__key__": f"{i:09d}", ext: data, "cls": str(int(label)).encode("ascii")})
            if not written or written[-1] != sink.fname:
                written.append(sink.fname)
    return written


def write_class_names(out_dir: Path, names: list[str]) -> Path:
    path = Path(out_dir) / CLASSES_FILE
    path.write_text(json.dumps(list(names), ensure_ascii=False) + "\n", encoding="utf-8")
    return path
