"""Merging bundles grown from one export: two devices, or a fleet of them.

``merge(base, devices, out)`` gives ``base``'s state plus a replay of every
device's updates that it does not have yet (recognised by update id), in the
order given, so the result equals one device having seen every example. The
inputs are streamed: one device's state is read at a time, its new updates go
into the output's journal (one all-or-nothing append per device) and into a
head ``Accumulator`` (per-class additive statistics, ``heads.base``), and the
head is solved once at the end, so time and memory grow linearly with the
number of devices. A device that removed classes is applied update by update
(``apply``: removal is not additive).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import card, journal, signing, storage
from ..errors import EdgeclRuntimeError, IncompatibleBundleError, InvalidInputError, StorageError
from ..journal import Record
from ..manifest import MANIFEST_NAME, fixed_files, parse_manifest, read_manifest_bytes, v1_bundle_id
from .commits import commit_records, forget, locked_state, snapshot_due, write_state
from .reads import RECORD_IDS, State, apply, class_rows, known_ids, read_base, read_state

PathLike = str | Path


def merge(a: PathLike, b: PathLike | Iterable[PathLike], out: PathLike | None = None,
          timeout: float | None = None) -> State:
    """Merge the updates of bundle ``b`` (one path, or a sequence of paths: a fleet) into bundle ``a``.

    In place (``out`` None or ``a``), or into a new bundle ``out`` (written in a
    temporary directory renamed to ``out`` when complete: ``out`` is absent or
    complete, whatever happens). All inputs must come from ``a``'s export (same
    ``bundle_id``); a foreign one is refused before anything is written. A device
    must still hold, in its journal, every update since the state ``a`` starts from
    (do not compact a device before merging it). Merging a device twice changes
    nothing. In place, each device's updates are committed as they are merged.
    """
    a, others = Path(a), _inputs(b)
    sa_id = _bundle_id(a)
    for other in others:
        if _bundle_id(other) != sa_id:
            raise IncompatibleBundleError(
                f"cannot merge {other} into {a}: they come from different exports (bundle_id {_bundle_id(other)} "
                f"vs {sa_id}); only bundles grown from the same export merge")
    if out is None or Path(out).resolve() == a.resolve():
        with storage.locked(a, timeout):
            return _merge_all(locked_state(a, timeout, full=True), others, in_place=True)
    out = Path(out)
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir() or any(out.iterdir()):
            raise InvalidInputError(f"merge output {out} exists and is not empty")
    storage.remove_dead_temps(out.parent, f".{out.name}.")  # of a merge that was killed
    try:
        return _merge_to_new(a, others, out, timeout)
    except OSError as exc:
        raise storage.storage_error(exc, f"write the merged bundle {out}") from exc


def _inputs(b) -> list[Path]:
    others = [Path(b)] if isinstance(b, (str, os.PathLike)) else [Path(p) for p in b]
    if not others:
        raise InvalidInputError("no bundles to merge")
    return others


def _bundle_id(path: Path) -> str:
    """The export a bundle comes from, read from its manifest alone (a cheap check before any merging)."""
    m, version = parse_manifest(read_manifest_bytes(path), str(path / MANIFEST_NAME))
    return v1_bundle_id(m) if version == 1 else m["bundle_id"]


def _merge_to_new(a: Path, others: list[Path], out: Path, timeout: float | None) -> State:
    """Merge into a copy of ``a`` in a temporary directory next to ``out``, renamed to ``out`` when complete
    (the commit point); the temporary directory is removed on any failure."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=storage.TMP_SUFFIX, dir=out.parent))
    try:
        with storage.locked(a, timeout):
            sa = locked_state(a, timeout, full=True)
            m = sa.manifest
            for name in dict.fromkeys([*fixed_files(m), m["base"]["file"], m["head"]["file"], m["journal"]["file"],
                                       MANIFEST_NAME]):
                if (a / name).is_file():
                    storage.copy_file(a / name, tmp / name)
        with storage.locked(tmp, timeout):
            st = _merge_all(locked_state(tmp, timeout, full=True), others, in_place=False)
        (tmp / storage.LOCK_NAME).unlink(missing_ok=True)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp made it 0700
        storage.fsync_dir(tmp)
        if out.exists():
            out.rmdir()
        storage.sys_rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    storage.fsync_dir_after_commit(out.parent, f"merging into {out}")
    forget(tmp)
    st.path = out
    return st


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _merge_all(sa: State, others: list[Path], in_place: bool) -> State:
    """Stream every device's new updates into ``sa`` (a locked state), then commit the head."""
    signing.require_signer(sa.path)
    known = known_ids(sa)
    run = _Run(sa, sync=in_place)
    for b in others:
        sb = read_state(b, verify="state", full=True)
        _check_folded(sa, sb, b, known)
        fresh = [r for r in sb.scan.records if r.id not in known]
        del sb  # one device in memory at a time
        if fresh:
            run.merge_device(fresh, b)
            known.update(r.id for r in fresh)
    return run.commit(in_place)


def _check_folded(sa: State, sb: State, b: Path, known: set[str]) -> None:
    """Refuse a device compacted after updates the merge does not have (their examples are gone)."""
    if sb.manifest["base"]["id"] == sb.bundle_id:
        return  # never compacted: its base is the export
    _, b_base = read_base(sb)
    b_folded = {f"{int(i):016x}" for i in b_base.get(RECORD_IDS, np.zeros(0, np.uint64))}
    if not b_folded <= known:
        raise IncompatibleBundleError(
            f"cannot merge {b}: it was compacted after {len(b_folded - known)} update(s) that {sa.path} does not "
            "have, so their examples are gone; merge before compacting, or merge the other way round"
        )


class _Run:
    """The merge in progress: the head's accumulator, the classes and the output journal's end."""

    def __init__(self, st: State, sync: bool):
        self.st, self.sync = st, sync
        self.head, self.classes = st.head, list(st.classes)
        self.acc = st.head.accumulator()
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.end, self.digest, self.seq, self.count = st.scan.end, st.scan.digest, st.seq, 0
        self.jpath = st.path / st.manifest["journal"]["file"]

    def _record(self, r: Record, b: Path, emb) -> Record:
        extra = {k: v for k, v in r.extra.items() if k not in ("batch", "sig")}  # the device append's own
        return Record(self.seq + 1, r.op, r.name, r.id, r.time, emb, {**extra, "merged_from": str(b)})

    def merge_device(self, fresh: list[Record], b: Path) -> None:
        """Apply one device's new updates and append them to the journal (all of them, or none)."""
        if any(r.op != "add" for r in fresh):
            records = self._apply_in_turn(fresh, b)
        else:
            records = []
            for r in fresh:
                rec = self._record(r, b, r.embeddings)
                index = self.index.get(r.name)
                try:
                    self.acc.add(index, r.embeddings)
                except EdgeclRuntimeError as exc:
                    raise IncompatibleBundleError(f"cannot merge update {r.seq} of {b} ({r.op} {r.name!r}): {exc}") from exc
                if index is None:
                    self.index[r.name] = len(self.classes)
                    self.classes.append(r.name)
                records.append(rec)
                self.seq += 1
        if records:
            self.end, self.digest = journal.append(self.jpath, self.end, records, self.digest, sync=self.sync)
            self.count += len(records)

    def _apply_in_turn(self, fresh: list[Record], b: Path) -> list[Record]:
        """Updates that include removals, applied one by one (a removed class's examples leave shared statistics)."""
        self.head = self.acc.result()
        head, classes, records = self.head, self.classes, []
        for r in fresh:
            if r.op == "remove_class" and r.name not in classes:
                continue  # already gone on this side
            emb = self._rows(r.name, records) if r.op == "remove_class" else r.embeddings
            rec = self._record(r, b, emb)
            try:
                head, classes = apply(head, classes, rec, strict=False)
            except EdgeclRuntimeError as exc:
                raise IncompatibleBundleError(f"cannot merge update {r.seq} of {b} ({r.op} {r.name!r}): {exc}") from exc
            records.append(rec)
            self.seq += 1
        self.head, self.classes = head, classes
        self.acc = head.accumulator()
        self.index = {name: i for i, name in enumerate(classes)}
        return records

    def _rows(self, name: str, pending: list[Record]):
        """The examples class ``name`` got since it last appeared: from the output journal and ``pending``."""
        m = self.st.manifest
        scan = journal.scan(self.jpath, 0, journal.genesis(m["base"]["id"]), m["base"]["seq"])
        return class_rows([r for r in scan.records if r.end <= self.end] + pending, name)

    def commit(self, in_place: bool) -> State:
        """Write the head: always for a new bundle; in place, when a snapshot is due (else the journal holds it)."""
        st, head = self.st, self.acc.result()
        if not self.count:
            return commit_records(st, [], st.head, st.classes)
        j = {**st.manifest["journal"], "seq": self.seq, "bytes": self.end, "digest": self.digest}
        if not in_place:
            _fsync_file(self.jpath)
            return write_state(st, head, self.classes, j)
        if snapshot_due(st, len(st.lagging) + self.count, self.end):
            try:
                return write_state(st, head, self.classes, j)
            except (StorageError, OSError) as exc:  # the merged updates are committed (fsync'd journal)
                storage.warn_after_commit(f"{st.path}: the merge is committed (journal), but the head snapshot "
                                          f"failed and is postponed to the next update: {exc}")
        forget(st.path)
        st = read_state(st.path, verify="state", full=False)
        card.refresh(st)  # the model card of the merged state (the journal holds it; no snapshot was due)
        return st


def _fsync_file(path: Path) -> None:
    fd = storage.open_regular(path, os.O_RDONLY)
    try:
        storage.fsync_fd(fd)
    finally:
        os.close(fd)
