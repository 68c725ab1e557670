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

Every write loops until all bytes are written (short writes) or raises
``StorageError`` (disk full, permissions, I/O error) after removing what it
created, so a failure before a commit point leaves the bundle as it was; a
failure after one (syncing the directory after a rename) is a warning
(``warn_after_commit``). Files are opened with ``O_NOFOLLOW`` and must be
regular files; new files are created with ``O_EXCL`` after removing whatever
held the name, so nothing is ever written through a symbolic link.

Updates are serialised by an advisory ``flock`` on ``BUNDLE/.lock``; a second
writer waits up to a timeout and then fails with ``LockTimeoutError``.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import io
import json
import logging
import os
import stat
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import BundleError, LockTimeoutError, StorageError, UnsafeFileError

log = logging.getLogger("edgecl.runtime")

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
LOCK_TIMEOUT = 30.0  # seconds a writer waits for another one
_LOCAL = threading.local()  # .held: bundles whose lock this thread holds (threads wait on the lock like processes)
FSYNC = True  # tests that only measure sizes may turn durability off; never in production
COPY_CHUNK = 1 << 20
# Bundle files are never opened through a symbolic link (O_NOFOLLOW), a FIFO never blocks an open
# (O_NONBLOCK; regular files ignore it), and whatever is opened must be a regular file.
_OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def crash_point(name: str) -> None:
    """No-op hook between the steps of an update; tests replace it to simulate a crash."""


# ------------------------------------------------------------------ system calls
# Every write, fsync, rename, truncation and file creation of a bundle goes through these five
# functions, so the fault-injection tests (tests/test_faults.py) can make any of them fail.
def sys_open(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    return os.open(path, flags, mode)


def sys_write(fd: int, data: memoryview, offset: int) -> int:
    return os.pwrite(fd, data, offset)


def sys_fsync(fd: int) -> None:
    if FSYNC:
        os.fsync(fd)


def sys_rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    os.replace(src, dst)


def sys_truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


_REASONS = {
    errnos.ENOSPC: "no space left on the device",
    errnos.EDQUOT: "disk quota exceeded",
    errnos.EACCES: "permission denied",
    errnos.EPERM: "operation not permitted",
    errnos.EROFS: "read-only file system",
    errnos.EIO: "input/output error",
}


def storage_error(exc: OSError, what: str, unchanged: bool = True) -> StorageError:
    """The ``StorageError`` for an OS error while doing ``what`` (a symlink refusal stays an ``UnsafeFileError``)."""
    if isinstance(exc, (StorageError, UnsafeFileError)):
        return exc
    reason = _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)
    tail = "; the bundle is unchanged" if unchanged else ""
    return StorageError(f"cannot {what}: {reason} [errno {exc.errno}]{tail}", exc.errno)


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that refuses symbolic links and anything but a regular file (``UnsafeFileError``).

    Other OS errors (``FileNotFoundError`` included) propagate unchanged.
    """
    try:
        fd = sys_open(path, flags | _OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno in (errnos.ELOOP, errnos.EMLINK) and os.path.islink(path):
            raise UnsafeFileError(f"{path} is a symbolic link; bundle files must be regular files") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path} is not a regular file; bundle files must be regular files")
        if flags & os.O_NONBLOCK == 0 and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike) -> None:
    """``FileNotFoundError`` if ``path`` is absent, ``UnsafeFileError`` unless it is a regular file (links refused)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"{path} is a symbolic link; bundle files must be regular files")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file; bundle files must be regular files")


def check_bundle_dir(bundle_dir: Path) -> None:
    """Refuse a bundle directory holding a symbolic link, FIFO, socket or device (``UnsafeFileError``).

    The runtime reads and writes only regular files of the bundle directory (and the ``.ort-cache``
    directory); anything else there is refused rather than followed. Real subdirectories are ignored.
    """
    try:
        entries = list(os.scandir(bundle_dir))
    except OSError:
        return  # the reader reports the missing or unreadable directory
    for entry in entries:
        if entry.is_symlink():
            raise UnsafeFileError(
                f"{entry.path} is a symbolic link; a bundle directory holds only regular files (remove the link)"
            )
        if not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
            raise UnsafeFileError(f"{entry.path} is not a regular file; remove it from the bundle directory")


def read_regular(path: str | os.PathLike, start: int = 0, limit: int | None = None) -> bytes:
    """The bytes of a regular file from ``start`` (at most ``limit``), never through a symbolic link."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        n = max(0, size - start) if limit is None else max(0, min(limit, size - start))
        chunks, pos = [], start
        while n > 0:
            block = os.pread(fd, min(n, 1 << 24), pos)
            if not block:
                break
            chunks.append(block)
            pos += len(block)
            n -= len(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, looping over short writes; a write that makes no progress is ENOSPC."""
    view = memoryview(data).cast("B")
    pos = 0
    while pos < len(view):
        n = sys_write(fd, view[pos:], offset + pos)
        if n <= 0:
            raise OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC))
        pos += n


def fsync_fd(fd: int) -> None:
    sys_fsync(fd)


def fsync_dir(path: Path) -> None:
    if os.name != "posix" or not FSYNC:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        sys_fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_after_commit(path: Path, what: str) -> None:
    """``fsync_dir`` after a commit point: a failure is a warning (the change is made, and visible)."""
    try:
        fsync_dir(path)
    except OSError as exc:
        warn_after_commit(f"{what} is done, but syncing the directory {path} failed ({exc}); it may not survive a power cut")


def warn_after_commit(msg: str) -> None:
    """Report a failure after an update's commit point: the update stands, so this is a warning, never an error."""
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    log.warning("%s", msg)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


def remove_dead_temps(directory: Path, prefix: str = ".") -> int:
    """Delete ``PREFIX<pid>.*.tmp`` files and directories whose creating process is gone; returns how many.

    For temporaries outside a bundle's lock (a merge's output directory, the optimised-model cache):
    another live process may still be writing those of its own pid.
    """
    n = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isascii() and pid.isdigit() and not pid_alive(int(pid)):
                if entry.is_dir(follow_symlinks=False):
                    import shutil

                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _unlink_quietly(Path(entry.path))
                n += 1
    return n


def temp_name(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (``.NAME.PID.RANDOM.tmp``), removed by the next writer if left."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The rename is the commit point: a failure before it raises ``StorageError`` and leaves ``path``
    as it was; a failure to sync the directory after it is a warning.
    """
    tmp = temp_name(path)
    try:
        _write_fsynced(tmp, data, crash_name=path.name)
        sys_rename(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise storage_error(exc, f"write {path}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir_after_commit(path.parent, f"replacing {path.name}")


def write_new_file(path: Path, data: bytes) -> None:
    """Write and fsync a file that nothing references yet (a new head file): no rename needed.

    Only the manifest rename makes it part of the bundle; a crash mid-write
    leaves an unreferenced file that the next update removes. A leftover (or a
    symbolic link) under the name is removed first, never written through.
    """
    _unlink_quietly(path)
    try:
        _write_fsynced(path, data, crash_name=path.name)
    except OSError as exc:
        _unlink_quietly(path)
        raise storage_error(exc, f"write {path}") from exc


def copy_file(src: Path, dst: Path) -> None:
    """Copy the regular file ``src`` to the new file ``dst`` (never through a link) and fsync it."""
    fin = open_regular(src)
    try:
        fd = open_regular(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            pos = 0
            while block := os.pread(fin, COPY_CHUNK, pos):
                write_all(fd, block, pos)
                pos += len(block)
            sys_fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(fin)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_fsynced(path: Path, data: bytes, crash_name: str) -> None:
    """Write ``data`` to the new file ``path`` and fsync it (with a crash point half-way, for the tests)."""
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        half = len(data) // 2
        write_all(fd, memoryview(data)[:half], 0)
        crash_point(f"mid-write:{crash_name}")
        write_all(fd, memoryview(data)[half:], half)
        sys_fsync(fd)
    finally:
        os.close(fd)


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
    Symbolic links under those names are removed (never followed).
    """
    for pattern in STALE_PATTERNS:
        for p in bundle_dir.glob(pattern):
            if p.name not in keep and (p.is_symlink() or p.is_file()):
                _unlink_quietly(p)


def remove_temp_files(bundle_dir: Path) -> int:
    """Delete the ``.*.tmp`` files of interrupted updates (under the lock, so none is in use); returns how many."""
    n = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(bundle_dir):
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and not entry.is_dir(follow_symlinks=False):
                _unlink_quietly(Path(entry.path))
                n += 1
    return n


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
    held = _LOCAL.__dict__.setdefault("held", set())
    if key in held:  # re-entrant within a thread (flock would deadlock on a second descriptor)
        yield
        return
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    path = bundle_dir / LOCK_NAME
    try:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT)
    except FileNotFoundError:
        raise BundleError(f"bundle directory not found: {bundle_dir}") from None
    except OSError as exc:
        raise storage_error(exc, f"open the update lock {path} (read-only bundle?)") from exc
    try:
        _wait_for_lock(fd, timeout, bundle_dir)
        with contextlib.suppress(OSError):  # informative only (a full disk may refuse it)
            os.pwrite(fd, f"{os.getpid():<15d}\n".encode(), 0)  # fixed width: no truncate needed
        remove_temp_files(bundle_dir)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _wait_for_lock(fd: int, timeout: float, bundle_dir: Path) -> None:
    """Takes the exclusive flock on ``fd``, polling with backoff until ``timeout`` seconds pass."""
    import fcntl  # POSIX only: the caller checked

    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise LockTimeoutError(
                    f"another process (pid {holder}) has been updating {bundle_dir} for more than "
                    f"{timeout:g} s; retry later or raise the timeout"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
