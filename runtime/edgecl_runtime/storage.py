"""Crash-safe writes of a bundle's mutable state, and the update lock.

A bundle update first appends its record to the journal (fsync: the
write-ahead step and commit point, see ``edgecl_runtime.journal``); when a head
snapshot is due (``edgecl_runtime.store``) it then writes a *new* head file under
a new name, then replaces ``manifest.json`` (temp file + fsync + rename +
directory fsync). The manifest rename is the commit point of the head snapshot:
before it the old manifest still names the old, untouched head file (and the
journal record is replayed on load); after it the new manifest names the new,
complete one. Leftovers of an interrupted update (temp files, unreferenced
head, base and journal files) are removed by the next update.

Updates are serialised by an advisory ``flock`` on ``BUNDLE/.lock``; a second
writer waits up to a timeout and then fails with ``LockTimeoutError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import BundleError, LockTimeoutError

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
LOCK_TIMEOUT = 30.0  # seconds a writer waits for another one
_HELD: set[str] = set()  # bundles whose lock this process holds
FSYNC = True  # tests that only measure sizes may turn durability off; never in production


def crash_point(name: str) -> None:
    """No-op hook between the steps of an update; tests replace it to simulate a crash."""


def fsync_fd(fd: int) -> None:
    if FSYNC:
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    if os.name != "posix" or not FSYNC:
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
        _write_fsynced(tmp, data, crash_name=path.name)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes) -> None:
    """Write and fsync a file that nothing references yet (a new head file): no rename needed.

    Only the manifest rename makes it part of the bundle; a crash mid-write
    leaves an unreferenced file that the next update removes.
    """
    _write_fsynced(path, data, crash_name=path.name)


def _write_fsynced(path: Path, data: bytes, crash_name: str) -> None:
    """Write ``data`` to ``path`` and fsync it (with a crash point half-way, for the tests)."""
    with open(path, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        crash_point(f"mid-write:{crash_name}")
        f.write(data[half:])
        f.flush()
        fsync_fd(f.fileno())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def json_bytes(obj: Any, pretty_limit: int = 4096) -> bytes:
    """JSON for people and for speed: each top-level field on its own line, small values indented.

    Values whose compact form exceeds ``pretty_limit`` bytes (class lists,
    checksums of thousands of classes) stay on one line: the indenting encoder
    is pure Python and would dominate the time of an update on large bundles.
    """
    if not isinstance(obj, dict):
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    lines = []
    for key, value in obj.items():
        text = json.dumps(value, ensure_ascii=False)
        if len(text) <= pretty_limit:
            text = json.dumps(value, ensure_ascii=False, indent=2).replace("\n", "\n  ")
        lines.append(f"  {json.dumps(key, ensure_ascii=False)}: {text}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


STALE_PATTERNS = ("head-*.npz", "base-*.npz", "head-*.safetensors", "base-*.safetensors", "journal-*.log",
                  f".*{TMP_SUFFIX}")


def remove_stale(bundle_dir: Path, keep: set[str]) -> None:
    """Delete unreferenced head/base/journal files and temp files left by an interrupted update.

    Only called under the update lock. A reader that still holds the previous
    manifest may find its head file gone: it re-reads the manifest and retries.
    """
    for pattern in STALE_PATTERNS:
        for p in bundle_dir.glob(pattern):
            if p.name not in keep and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()


@contextlib.contextmanager
def locked(bundle_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive advisory lock on the bundle for the duration of an update.

    Waits up to ``timeout`` seconds (default ``LOCK_TIMEOUT``) for another
    writer, then raises ``LockTimeoutError`` naming the holder's pid. The lock
    is released by the kernel when the holder dies, so a crashed writer never
    blocks the next one.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: updates are still atomic, only not serialised
        yield
        return
    key = str(Path(bundle_dir).resolve())
    if key in _HELD:  # re-entrant within a process (flock would deadlock on a second descriptor)
        yield
        return
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    path = bundle_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise BundleError(f"bundle directory not found: {bundle_dir}") from None
    except OSError as exc:
        raise BundleError(f"cannot open the update lock {path} (read-only bundle?): {exc}") from exc
    try:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                    raise LockTimeoutError(
                        f"another process (pid {holder}) has been updating {bundle_dir} for more than "
                        f"{timeout:g} s; retry later or raise the timeout"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        os.pwrite(fd, f"{os.getpid():<15d}\n".encode(), 0)  # fixed width: no truncate needed
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
