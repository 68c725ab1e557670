"""On-disk store of embedding matrices: one verified, memory-mapped file per key.

A file holds one float32 matrix ``(N, D)`` (row ``i``: the embedding of image
``i`` of a data split) behind a one-line JSON header naming its key, shape and
the blake2b digest of the data. Files are written to a temporary name, fsynced
and renamed (``edgecl_runtime.storage.atomic_write_bytes``), so a reader sees
a whole file or none; a file whose size or digest does not match its header
(truncated, corrupted) is deleted and rebuilt, never read. Writers of one key
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
from typing import Callable, Iterator

import numpy as np

MAGIC = "edgecl-embeddings-v1"
DTYPE = np.dtype("<f4")


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def encode(key: str, matrix: np.ndarray) -> bytes:
    """Header line + raw little-endian float32 rows."""
    data = np.ascontiguousarray(matrix, dtype=DTYPE)
    header = {"magic": MAGIC, "key": key, "shape": list(data.shape), "digest": digest(data.data)}
    return json.dumps(header).encode("ascii") + b"\n" + data.tobytes()


class EmbeddingStore:
    """Embedding matrices under ``root`` (see module doc); ``hits``/``misses``/``rebuilt`` count lookups."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = self.rebuilt = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.emb"

    def get_or_create(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The stored matrix of ``key`` (read-only memory map), computing and storing it on a miss."""
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
        matrix = np.memmap(path, dtype=DTYPE, mode="r", offset=offset, shape=shape)
        if digest(memoryview(matrix).cast("B")) != header.get("digest"):
            del matrix
            return self._discard(path)
        return matrix

    def write(self, key: str, matrix: np.ndarray) -> None:
        from edgecl_runtime.storage import atomic_write_bytes

        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(key), encode(key, matrix))

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
