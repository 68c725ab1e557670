"""Fault injection into a bundle's writes: every mutating operation x every write-side system call x
(ENOSPC, short write then a full disk, EACCES), checking that nothing is lost and nothing is committed
twice. Used by tests/test_faults.py and benchmarks/fault_matrix.py.

``storage`` routes every open-for-writing, write, fsync, rename and truncation of a bundle through
``sys_open``/``sys_write``/``sys_fsync``/``sys_rename``/``sys_truncate``; ``Injector`` replaces them and
fails the k-th call. For each (operation, k, mode) a fresh copy of a prepared bundle is updated with
the fault armed, then:

* the operation raised: it must be a documented ``EdgeclRuntimeError`` and the bundle must read back
  (every checksum and the whole journal chain) exactly as before; a retry without the fault must then
  give exactly the reference result (so a caller that retries commits the update once);
* it returned: the bundle must read back exactly as the reference result (committed, once).

The state compared is the class list, the example count of every class (a double commit changes
it) and the head arrays (to float32 rounding: a postponed snapshot replays the journal instead of
reading the snapshot).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecl_runtime import EdgeclRuntimeError, storage, store
from tests.fixtures import copy_fixture, embeddings

MODES = ("enospc", "short", "eacces")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


class Injector:
    """Replaces storage's system calls; fails call number ``fail_at`` (0-based) with ``mode``.

    ``enospc`` and ``short`` model a disk that fills up: from the faulty call on, every write and every
    file creation fails with ENOSPC (``short`` first writes half of the data and reports it); ``eacces``
    fails one call with EACCES (a ``short`` fault at a call that writes nothing just fills the disk from
    there on). ``fail_at=None`` only counts the calls.
    """

    def __init__(self, fail_at: int | None = None, mode: str = "enospc"):
        self.fail_at, self.mode = fail_at, mode
        self.calls: list[str] = []
        self.full = False
        self.fired = False
        self.real = {n: getattr(storage, n) for n in ("sys_open", "sys_write", "sys_fsync", "sys_rename", "sys_truncate")}

    def _due(self, what: str) -> bool:
        self.calls.append(what)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            self.fired = True
            if self.mode in ("enospc", "short"):
                self.full = True
            return True
        return False

    def _error(self, code: int | None = None) -> OSError:
        code = code or (errno.EACCES if self.mode == "eacces" else errno.ENOSPC)
        return OSError(code, os.strerror(code))

    def sys_open(self, path, flags, mode=0o644):
        if flags & _WRITE_FLAGS:
            if self._due(f"open {Path(path).name}") and self.mode != "short":
                raise self._error()
            if self.full and flags & os.O_CREAT and not os.path.exists(path):
                raise self._error(errno.ENOSPC)
        return self.real["sys_open"](path, flags, mode)

    def sys_write(self, fd, data, offset):
        due = self._due("write")
        if due and self.mode == "short" and len(data) > 1:
            return self.real["sys_write"](fd, data[: len(data) // 2], offset)
        if due or self.full:
            raise self._error(errno.ENOSPC if self.full else None)
        return self.real["sys_write"](fd, data, offset)

    def sys_fsync(self, fd):
        if self._due("fsync") and self.mode != "short":
            raise self._error()
        return self.real["sys_fsync"](fd)

    def sys_rename(self, src, dst):
        if self._due(f"rename {Path(dst).name}") and self.mode != "short":
            raise self._error()
        return self.real["sys_rename"](src, dst)

    def sys_truncate(self, fd, size):
        if self._due("truncate") and self.mode != "short":
            raise self._error()
        return self.real["sys_truncate"](fd, size)

    @contextlib.contextmanager
    def armed(self):
        names = list(self.real)
        for n in names:
            setattr(storage, n, getattr(self, n))
        try:
            yield self
        finally:
            for n in names:
                setattr(storage, n, self.real[n])


# ---------------------------------------------------------------- operations
def _bundle_with_updates(d: Path) -> Path:
    """The fixture bundle with a device-added class ``x`` and a lagging journal (no snapshot due)."""
    copy_fixture(d)
    store.add_examples(d, "x", embeddings(1, 4))  # the journal's first record: snapshotted
    store.add_examples(d, "alpha", embeddings(2, 3))  # lagging behind the head file
    store.add_examples(d, "x", embeddings(3, 2))
    return d


def _other_device(origin: Path, d: Path, n: int = 40) -> Path:
    shutil.copytree(origin, d)
    for i in range(n):
        store.add_examples(d, f"b{i % 7}", embeddings(100 + i, 2))
    store.remove_class(d, "b3")
    return d


@dataclass
class Op:
    name: str
    run: Callable[[Path, Path], object]  # (bundle, scratch dir) -> result
    snapshot_every: int = store.SNAPSHOT_EVERY
    result_dir: Callable[[Path, Path], Path] = field(default=lambda d, t: d)


def operations(template: Path, other: Path) -> list[Op]:
    """Every mutating operation, on a copy of ``template`` (``other``: a device with 41 updates to merge)."""
    return [
        Op("add", lambda d, t: store.add_examples(d, "new", embeddings(7, 3))),
        Op("add+snapshot", lambda d, t: store.add_examples(d, "new", embeddings(7, 3)), snapshot_every=3),
        Op("extend", lambda d, t: store.add_examples(d, "beta", embeddings(8, 3))),
        Op("add-batch", lambda d, t: store.add_batch(d, [(f"n{i}", embeddings(20 + i, 2)) for i in range(5)])),
        Op("remove", lambda d, t: store.remove_class(d, "x")),
        Op("remove+snapshot", lambda d, t: store.remove_class(d, "x"), snapshot_every=3),
        Op("merge", lambda d, t: store.merge(d, other)),
        Op("merge-out", lambda d, t: store.merge(d, other, t / "out"), result_dir=lambda d, t: t / "out"),
        Op("rollback", lambda d, t: store.rollback(d, 2)),
        Op("compact", lambda d, t: store.compact(d)),
        Op("snapshot", lambda d, t: store.snapshot(d)),
    ]


def prepare(root: Path) -> tuple[Path, list[Op]]:
    template = _bundle_with_updates(root / "template")
    other = _other_device(template, root / "other")
    return template, operations(template, other)


def state_of(d: Path) -> dict:
    """What must survive: classes, examples per class, head arrays, journal position (every checksum verified)."""
    st = store.read_state(d, verify=True)
    return {"classes": list(st.classes), "counts": [int(c) for c in st.head.counts], "seq": st.seq,
            "arrays": {k: np.asarray(v) for k, v in st.head.arrays().items()}}


def same(a: dict, b: dict) -> bool:
    if (a["classes"], a["counts"], a["seq"]) != (b["classes"], b["counts"], b["seq"]):
        return False
    return sorted(a["arrays"]) == sorted(b["arrays"]) and all(
        a["arrays"][k].shape == b["arrays"][k].shape and np.allclose(a["arrays"][k], b["arrays"][k], rtol=1e-6, atol=1e-7)
        for k in a["arrays"])


@contextlib.contextmanager
def _snapshot_every(n: int):
    old = store.SNAPSHOT_EVERY
    store.SNAPSHOT_EVERY = n
    store._WRITER_CACHE.clear()
    try:
        yield
    finally:
        store.SNAPSHOT_EVERY = old
        store._WRITER_CACHE.clear()


def _leftovers(d: Path, t: Path) -> list[str]:
    """Temp files in the bundle, and temp directories next to a merge output."""
    found = [p.name for p in d.iterdir() if p.name.endswith(storage.TMP_SUFFIX)] if d.is_dir() else []
    return found + [p.name for p in t.iterdir() if p.name.startswith(".out.")]


@dataclass
class Trial:
    op: str
    mode: str
    point: int
    call: str
    outcome: str  # raised | returned | warned
    error: str = ""
    problems: list[str] = field(default_factory=list)


def run_trial(op: Op, template: Path, work: Path, fail_at: int, mode: str, reference: dict) -> Trial:
    d, t = work / "b", work / "t"
    shutil.rmtree(work, ignore_errors=True)
    t.mkdir(parents=True)
    shutil.copytree(template, d)
    before = state_of(d)
    inj = Injector(fail_at, mode)
    trial = Trial(op.name, mode, fail_at, "", "returned")
    with _snapshot_every(op.snapshot_every), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with inj.armed():
                op.run(d, t)
        except EdgeclRuntimeError as exc:
            trial.outcome, trial.error = "raised", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - what the test must never see
            trial.outcome, trial.error = "raised", f"{type(exc).__name__}: {exc}"
            trial.problems.append(f"undocumented exception {type(exc).__name__}: {exc}")
        if trial.outcome == "returned" and any(issubclass(w.category, RuntimeWarning) for w in caught):
            trial.outcome = "warned"
        trial.call = inj.calls[fail_at] if fail_at < len(inj.calls) else "(not reached)"
        out = op.result_dir(d, t)
        if trial.outcome == "raised":
            if not same(state_of(d), before):
                trial.problems.append("raised, but the bundle changed (committed and raised)")
            if out != d and out.exists():
                trial.problems.append("raised, but the merge output exists")
            try:
                op.run(d, t)  # the caller's retry, with the disk repaired
            except EdgeclRuntimeError as exc:
                trial.problems.append(f"the retry failed: {exc}")
        if not same(state_of(out), reference):
            trial.problems.append("the bundle differs from the reference result (lost or doubled update)")
        if trial.outcome == "raised" and (left := _leftovers(d, t)):
            trial.problems.append(f"temporary files left after the retry: {left}")
    return trial


def reference_of(op: Op, template: Path, work: Path) -> tuple[dict, list[str]]:
    """The result of ``op`` without faults, and the write-side calls it makes."""
    d, t = work / "b", work / "t"
    shutil.rmtree(work, ignore_errors=True)
    t.mkdir(parents=True)
    shutil.copytree(template, d)
    inj = Injector()
    with _snapshot_every(op.snapshot_every):
        with inj.armed():
            op.run(d, t)
        return state_of(op.result_dir(d, t)), inj.calls


def run_matrix(root: Path, ops: list[str] | None = None, modes=MODES) -> list[Trial]:
    """Every operation (or those named) x every write-side call x every mode."""
    template, all_ops = prepare(root)
    trials = []
    for op in all_ops:
        if ops and op.name not in ops:
            continue
        reference, calls = reference_of(op, template, root / "work")
        for mode in modes:
            for k in range(len(calls)):
                trials.append(run_trial(op, template, root / "work", k, mode, reference))
    return trials
