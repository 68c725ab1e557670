"""Crash-safe writes of a bundle's mutable state.

A bundle update writes a *new* head file under a new name, then replaces
``manifest.json`` (temp file + fsync + rename + directory fsync). The manifest
rename is the single commit point: before it the old manifest still names the
old, untouched head file; after it the new manifest names the new, complete
one. Leftovers of an interrupted update (temp files, unreferenced head files)
are removed by the next update.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

TMP_SUFFIX = ".tmp"


def crash_point(name: str) -> None:
    """No-op hook between the steps of an update; tests replace it to simulate a crash."""


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            crash_point(f"mid-write:{path.name}")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def remove_stale(bundle_dir: Path, keep: set[str], pattern: str = "head-*.npz") -> None:
    """Delete unreferenced head files and temp files left by an interrupted update."""
    for p in list(bundle_dir.glob(pattern)) + list(bundle_dir.glob(f".*{TMP_SUFFIX}")):
        if p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def locked(bundle_dir: Path) -> Iterator[None]:
    """Exclusive advisory lock on the bundle for the duration of an update."""
    try:
        import fcntl
    except ImportError:  # not POSIX: updates are still atomic, only not serialised
        yield
        return
    with open(bundle_dir / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
