"""On-disk store of embedding matrices: one verified, memory-mapped file per key.

A file holds one float32 matrix ``(N, D)`` (row ``i``: the embedding of image
``i`` of a data split) behind a one-line JSON header naming its key, shape and
the blake2b digest of the data (padded with spaces to ``HEADER_BYTES``, so the
rows can be written as they are computed and the header filled in last). A
matrix is written batch by batch (``write`` takes an array or an iterable of
row blocks: a data set larger than memory is embedded straight to disk) to a
temporary name, fsynced and renamed, so a reader sees a whole file or none; a
file whose size or digest does not match its header (truncated, corrupted) is
deleted and rebuilt, never read. The digest is checked by reading the file in
blocks, and ``rows`` copies rows out of the memory map and then releases the
mapped pages, so reading a large matrix does not keep it resident in the
process. Writers of one key
serialise on an advisory lock (``fcntl``), so two processes filling one
store compute each matrix once: the second one waits and reads the first
one's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

MAGIC = "edgecl-embeddings-v1"
DTYPE = np.dtype("<f4")
HEADER_BYTES = 512
READ_BLOCK = 1 << 22


def header_line(key: str, shape: tuple[int, int], data_digest: str) -> bytes:
    """The JSON header, space-padded to ``HEADER_BYTES`` with its newline."""
    line = json.dumps({"magic": MAGIC, "key": key, "shape": list(shape), "digest": data_digest}).encode("ascii")
    if len(line) >= HEADER_BYTES:
        raise ValueError(f"embedding key too long for the header: {key!r}")
    return line.ljust(HEADER_BYTES - 1) + b"\n"


def file_digest(path: Path, offset: int, nbytes: int) -> str:
    """Digest of ``nbytes`` of ``path`` from ``offset``, read in blocks (nothing stays mapped)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(offset)
        while nbytes > 0:
            block = f.read(min(READ_BLOCK, nbytes))
            if not block:
                break
            h.update(block)
            nbytes -= len(block)
    return h.hexdigest()


def release(matrix: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped matrix from this process (they are re-read from the page
    cache when touched again): rows already copied out do not count towards its memory."""
    import mmap

    m = getattr(matrix, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            m.madvise(mmap.MADV_DONTNEED)


class EmbeddingStore:
    """Embedding matrices under ``root`` (see module doc); ``hits``/``misses``/``rebuilt`` count lookups."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = self.rebuilt = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.emb"

    def get_or_create(self, key: str, compute: Callable[[], np.ndarray | Iterable[np.ndarray]]) -> np.ndarray:
        """The stored matrix of ``key`` (read-only memory map), computing and storing it on a miss
        (``compute`` returns the matrix or an iterable of its row blocks, written as they come)."""
        found = self.read(key)
        if found is not None:
            self.hits += 1
            return found
        with self._lock(key):
            found = self.read(key)  # another process may have written it while we waited
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            self.write(key, compute())
        out = self.read(key)
        if out is None:
            raise OSError(f"embedding cache file {self.path(key)} unreadable right after writing it")
        return out

    def read(self, key: str) -> np.ndarray | None:
        """The matrix of ``key``, or ``None`` if absent; an invalid file is deleted (and ``None``)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline(4096).decode("ascii"))
                offset = f.tell()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            return self._discard(path)
        if not isinstance(header, dict) or header.get("magic") != MAGIC or header.get("key") != key:
            return self._discard(path)
        shape = tuple(int(v) for v in header.get("shape", ()))
        if len(shape) != 2 or path.stat().st_size != offset + shape[0] * shape[1] * DTYPE.itemsize:
            return self._discard(path)
        if shape[0] * shape[1] == 0:
            return np.zeros(shape, DTYPE)
        if file_digest(path, offset, shape[0] * shape[1] * DTYPE.itemsize) != header.get("digest"):
            return self._discard(path)
        return np.memmap(path, dtype=DTYPE, mode="r", offset=offset, shape=shape)

    @staticmethod
    def rows(matrix: np.ndarray, idx) -> np.ndarray:
        """``matrix[idx]`` as an in-memory float32 copy; a memory map's pages are released afterwards."""
        out = np.array(matrix[idx], dtype=np.float32)
        release(matrix)
        return out

    def write(self, key: str, matrix: np.ndarray | Iterable[np.ndarray]) -> None:
        """Store ``matrix`` (or its row blocks, in order) under ``key``: temporary file, fsync, rename."""
        from edgecl_runtime.storage import fsync_dir_after_commit, temp_name

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = temp_name(path)
        try:
            with open(tmp, "xb") as f:
                f.write(b" " * HEADER_BYTES)
                shape, data_digest = _write_rows(f, [matrix] if isinstance(matrix, np.ndarray) else matrix)
                f.seek(0)
                f.write(header_line(key, shape, data_digest))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir_after_commit(path.parent, f"writing {path.name}")

    def read_text(self, name: str) -> str | None:
        """A small text record (e.g. the engine chosen for a module), ``None`` if absent."""
        try:
            return (self.root / f"{name}.txt").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def write_text(self, name: str, text: str) -> None:
        from edgecl_runtime.storage import atomic_write_bytes

        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"{name}.txt", text.encode("utf-8"))

    def _discard(self, path: Path) -> None:
        self.rebuilt += 1
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _write_rows(f, blocks: Iterable[np.ndarray]) -> tuple[tuple[int, int], str]:
    """Append float32 row blocks to ``f``; returns the matrix shape and the digest of its bytes."""
    h = hashlib.blake2b(digest_size=16)
    rows, dim = 0, None
    for block in blocks:
        data = np.ascontiguousarray(block, dtype=DTYPE)
        if data.ndim != 2 or (dim is not None and data.shape[1] != dim):
            raise ValueError(f"embedding blocks must be (n, {dim or 'D'}) matrices, got {data.shape}")
        dim = data.shape[1]
        h.update(data.data)
        f.write(data.data)
        rows += data.shape[0]
    return (rows, dim or 0), h.hexdigest()
