"""The update half of a bundle: consistent reads, journaled updates, history, rollback, compaction, merge.

What a bundle's state is: the *base* head (the export, or the last
compaction) plus the *journal* of updates since (``edgecl_runtime.journal``). The
*head file* is a snapshot of base + journal up to the manifest's
``journal.seq``. An update is committed by its fsync'd journal record; the
head file and manifest are rewritten only every ``SNAPSHOT_EVERY`` records (a
*head snapshot*), and the records after the snapshot are replayed on every
read, so a head state that lags the journal is never a lost update.

Every function here works on a bundle directory and only through the ``Head``
interface (``with_examples``, ``without_class``, ``arrays``, ``from_arrays``),
so it is the same for every head kind. Writers hold the bundle's lock
(``storage.locked``) and re-read the state from disk, so a stale in-memory
``Bundle`` never loses another process's update. Readers take no lock: they
read the manifest, the files it names and the journal tail, then check that
the manifest did not change meanwhile (else retry), so they see the old or the
new state, never a mix.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import inputs, journal, limits, signing, storage, tensors
from .errors import (
    CorruptBundleError,
    EdgeclRuntimeError,
    IncompatibleBundleError,
    InvalidInputError,
    MissingFileError,
    StorageError,
    TamperedFileError,
)
from .heads import head_class
from .journal import Record, Scan
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    array_spec,
    check_seal,
    file_entry,
    onnx_file,
    parse_manifest,
    read_manifest_bytes,
    seal,
    v1_bundle_id,
    verify_files,
)

log = logging.getLogger("edgecl.runtime")

RECORD_IDS = "__edgecl_record_ids__"  # in a base file: ids of every update folded into it
RESERVED_PREFIX = "__edgecl_"
READ_RETRIES = 50

# Head snapshots: an update is committed by its fsync'd journal record; the head file (and the manifest
# naming it) is rewritten only when this many records, or this many journal bytes, lag behind it, so an
# update costs one append + fsync instead of a head file and a manifest (measured in
# benchmarks/bench_update.py; see docs/bundle-format.md). Loads replay at most this much. 1 = every update.
SNAPSHOT_EVERY = 32
SNAPSHOT_BYTES = 1 << 20


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_id() -> str:
    return uuid.uuid4().hex


def initial_fields(kind: str, head_file: str, arrays: dict[str, np.ndarray], classes: list[str],
                   version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The manifest fields an export writes for a fresh bundle (``edgecl_export.bundle`` uses this)."""
    bundle_id = new_id()
    spec = array_spec(arrays)
    return {
        "format_version": version,
        "bundle_id": bundle_id,
        "head": {"kind": kind, "file": head_file, "generation": 0, "arrays": spec},
        "base": {"id": bundle_id, "file": head_file, "seq": 0, "classes": list(classes), "arrays": spec},
        "journal": {"file": "journal-000000.log", "seq": 0, "bytes": 0, "digest": journal.genesis(bundle_id)},
        "events": [],
        "trust_log": [],
    }


@dataclass
class State:
    """A consistent view of a bundle: its (version-2 shaped) manifest, head and journal."""

    path: Path
    manifest: dict[str, Any]  # as on disk, viewed as version 2; ``classes`` after replaying lagging records
    disk_version: int
    head: Any  # a runtime.heads.Head
    classes: list[str]
    scan: Scan  # journal records read (all if ``full``, else only those after the commit point)
    lagging: list[Record] = field(default_factory=list)  # durable records the head file does not hold yet
    full: bool = False
    journal_ok: bool = True
    trusted: list = field(default_factory=list)  # (file, manifest entry, actual entry) accepted as modified
    raw: bytes = b""  # the manifest bytes this state was read from (or written as)

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def seq(self) -> int:
        """Sequence number of the last update the state includes."""
        return self.scan.seq


# --------------------------------------------------------------------- reads
def _as_v2(m: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest viewed as version 2: its current head is the base, the journal is empty."""
    m = dict(m)
    bundle_id = v1_bundle_id(m)
    m["bundle_id"] = bundle_id
    m["head"] = {**m["head"], "generation": int(m["head"].get("generation", 0))}
    m["base"] = {"id": bundle_id, "file": m["head"]["file"], "seq": 0, "classes": list(m["classes"]), "arrays": None}
    m["journal"] = {"file": "journal-000000.log", "seq": 0, "bytes": 0, "digest": journal.genesis(bundle_id)}
    m.setdefault("events", [])
    m.setdefault("trust_log", [])
    return m


def head_suffix(version: int) -> str:
    """Head and base files: safetensors from version 3 on, numpy ``.npz`` before."""
    return ".safetensors" if version >= 3 else ".npz"


def head_bytes(arrays: dict[str, np.ndarray], version: int) -> bytes:
    return tensors.to_bytes(arrays) if version >= 3 else storage.npz_bytes(arrays)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return tensors.read(path)
    if not path.is_file():
        raise MissingFileError(f"bundle file missing: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:  # removed by a writer since we read the manifest (the caller retries)
        raise MissingFileError(f"bundle file missing: {path}") from None
    except Exception as exc:  # zipfile, numpy and OS errors of a damaged file
        raise CorruptBundleError(f"cannot read head file {path}: {exc}") from exc


def read_head(path: Path, m: dict[str, Any], which: str = "head"):
    """The head stored in ``m[which]["file"]`` (``which`` = ``head`` | ``base``), checked against the manifest.

    Returns ``(head, arrays)``; ``arrays`` includes reserved (``__edgecl_*``) entries.
    """
    entry = m[which]
    fname = entry["file"]
    arrays = _load_arrays(path / fname)
    head_arrays = {k: v for k, v in arrays.items() if not k.startswith(RESERVED_PREFIX)}
    spec = entry.get("arrays")
    if spec is not None:  # version 2: the manifest states every array's dtype and shape
        for name in sorted(set(spec) | set(head_arrays)):
            if name not in head_arrays:
                raise CorruptBundleError(f"{fname}: array {name!r} named by manifest field '{which}.arrays' is missing")
            if name not in spec:
                raise CorruptBundleError(f"{fname}: array {name!r} is not described by manifest field '{which}.arrays'")
            a, want = head_arrays[name], spec[name]
            if str(a.dtype) != want["dtype"]:
                raise CorruptBundleError(
                    f"{fname}: array {name!r} has dtype {a.dtype}, manifest field '{which}.arrays.{name}.dtype' "
                    f"says {want['dtype']}"
                )
            if list(a.shape) != list(want["shape"]):
                raise CorruptBundleError(
                    f"{fname}: array {name!r} has shape {list(a.shape)}, manifest field '{which}.arrays.{name}.shape' "
                    f"says {want['shape']}"
                )
    classes = m["classes"] if which == "head" else m["base"]["classes"]
    kind_cls = head_class(m["head"]["kind"])
    try:
        head = kind_cls.from_arrays(head_arrays, len(classes), int(m["backbone"]["embedding_dim"]))
    except CorruptBundleError as exc:
        raise CorruptBundleError(f"{fname}: {exc}") from exc
    except (ValueError, TypeError, IndexError) as exc:  # a head kind that does not wrap its own errors
        raise CorruptBundleError(f"{fname}: arrays do not form a {m['head']['kind']} head: {exc}") from exc
    if head.num_classes != len(classes):
        raise CorruptBundleError(f"{fname} holds {head.num_classes} classes, manifest field '{which}' lists {len(classes)}")
    return head, arrays


def apply(head, classes: list[str], rec: Record, strict: bool = True):
    """``(head, classes)`` after the update ``rec``; the one update rule for new updates, replay and merge.

    ``strict=False`` (merge) skips the removal of a class that is already gone.
    """
    if rec.op == "add":
        index = classes.index(rec.name) if rec.name in classes else None
        head = head.with_examples(index, rec.embeddings)
        return head, classes if index is not None else classes + [rec.name]
    if rec.op == "remove_class":
        if rec.name not in classes:
            if strict:
                raise InvalidInputError(f"no class named {rec.name!r} to remove")
            return head, classes
        if len(classes) == 1:
            raise InvalidInputError(f"cannot remove {rec.name!r}: a bundle needs at least one class")
        index = classes.index(rec.name)
        if rec.embeddings is not None and head.SHARED_STATISTICS:  # its known examples leave the shared statistics
            return head.without_class(index, rec.embeddings), classes[:index] + classes[index + 1 :]
        return head.without_class(index), classes[:index] + classes[index + 1 :]
    raise CorruptBundleError(f"unknown journal operation {rec.op!r}")


def replay(head, classes: list[str], records: list[Record], where: str):
    for rec in records:
        try:
            head, classes = apply(head, classes, rec)
        except EdgeclRuntimeError as exc:
            raise CorruptBundleError(f"{where}: cannot replay update {rec.seq} ({rec.op} {rec.name!r}): {exc}") from exc
    return head, classes


def _read_once(path: Path, raw: bytes, verify, trust_modified: bool, full: bool) -> State:
    storage.check_bundle_dir(path)  # no symbolic link or special file is ever followed
    m, version = parse_manifest(raw, str(path / MANIFEST_NAME))
    trusted: list = []
    if version >= 2 and (bad := check_seal(m, MANIFEST_NAME)):
        if not trust_modified:
            raise TamperedFileError(
                f"{path / MANIFEST_NAME}: its content does not match its checksum field (edited or corrupt)"
            )
        trusted.append((MANIFEST_NAME, {"sha256": bad[0]}, {"sha256": bad[1]}))
    signing.verify_manifest(m, str(path / MANIFEST_NAME))  # with trusted public keys configured
    if version == 1:
        m = _as_v2(m)
    if verify:
        names = None if verify is True else sorted({m["head"]["file"], m["base"]["file"]})
        verify_files(path, m, names, collect=trusted if trust_modified else None)
    limits.check_head_file(path / m["head"]["file"], m["head"].get("arrays"), "head.arrays")  # before decompressing
    head, arrays = read_head(path, m)
    if version == 1:
        m["head"]["arrays"] = m["base"]["arrays"] = array_spec({k: v for k, v in arrays.items()})
    j, b = m["journal"], m["base"]
    jpath = path / j["file"]
    journal_ok = True
    try:
        s = journal.read_committed(jpath, j["bytes"], j["seq"], j["digest"], b["id"], b["seq"], full)
    except CorruptBundleError as exc:
        if not trust_modified:
            raise
        journal_ok = False
        warnings.warn(f"{exc}; using the committed head state as trusted (--trust-modified)", stacklevel=3)
        log.warning("%s; using the committed head state as trusted", exc)
        s = Scan([], j["bytes"], j["digest"], j["seq"])
    lagging = [r for r in s.records if r.end > j["bytes"]]
    signing.verify_records(lagging, j["digest"], str(jpath))
    if s.discarded:
        log.warning("%s: discarding %d bytes after the last complete journal record (%s)", jpath, s.discarded, s.problem)
    classes = list(m["classes"])
    head, classes = replay(head, classes, lagging, str(jpath))
    m = {**m, "classes": classes}
    return State(path, m, version, head, classes, s, lagging, full, journal_ok, trusted, raw)


def read_state(path: str | Path, verify=True, trust_modified: bool = False, full: bool | None = None) -> State:
    """A consistent state of the bundle at ``path``, read without the lock.

    ``verify``: ``True`` checks every file's sha256, ``"state"`` only the head
    and base files (what updates rely on), ``False`` none. ``full``: read and
    check the whole journal chain (default: when ``verify is True``), else only
    the records after the commit point. ``trust_modified``: accept files whose
    checksum differs from the manifest (a logged warning; see ``trust``).
    """
    path = Path(path)
    full = (verify is True) if full is None else full
    last_exc: Exception | None = None
    for _ in range(READ_RETRIES):
        raw = read_manifest_bytes(path)
        try:
            state = _read_once(path, raw, verify, trust_modified, full)
        except (MissingFileError, CorruptBundleError, OSError) as exc:
            # A writer may have replaced the manifest and removed the files the old one named.
            if _manifest_changed(path, raw):
                last_exc = exc
                continue
            if isinstance(exc, EdgeclRuntimeError):
                raise
            raise CorruptBundleError(f"cannot read bundle {path}: {exc}") from exc
        if not _manifest_changed(path, raw):
            if state.trusted:
                _record_trust(state)
            return state
    raise CorruptBundleError(f"{path} kept changing while being read ({READ_RETRIES} attempts): {last_exc}")


def _manifest_changed(path: Path, raw: bytes) -> bool:
    try:
        return read_manifest_bytes(path) != raw
    except EdgeclRuntimeError:
        return True


def _record_trust(state: State) -> None:
    """Accept modified files (``trust_modified``): warn, then re-seal their checksums with a ``trust_log`` entry."""
    names = ", ".join(name for name, _, _ in state.trusted)
    msg = f"{state.path}: using file(s) whose checksum differs from the manifest because trust_modified=True: {names}"
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)
    entry = {
        "time": _now(),
        "event": "trust_modified",
        "files": {name: {"manifest": old, "actual": new} for name, old, new in state.trusted},
    }
    try:
        with storage.locked(state.path, timeout=5.0):
            raw = read_manifest_bytes(state.path)
            m, version = parse_manifest(raw, str(state.path / MANIFEST_NAME))
            for name, _, new in state.trusted:
                if name in m["files"] and (state.path / name).is_file() and file_entry(state.path / name) == new:
                    m["files"][name] = new
            m["trust_log"] = list(m.get("trust_log", [])) + [entry]
            storage.atomic_write_bytes(state.path / MANIFEST_NAME, storage.json_bytes(seal(m) if version >= 2 else m))
    except (EdgeclRuntimeError, OSError) as exc:
        log.warning("could not record the trust override in %s: %s", state.path, exc)
    state.manifest["trust_log"] = list(state.manifest.get("trust_log", [])) + [entry]
    state.manifest["files"] = {**state.manifest["files"],
                               **{n: new for n, _, new in state.trusted if n in state.manifest["files"]}}


# -------------------------------------------------------------------- writes
def _journal_epoch(name: str) -> int:
    match = re.fullmatch(r"journal-(\d+)\.log", name)
    return int(match.group(1)) if match else 0


def _write_state(st: State, head, classes: list[str], journal_entry: dict, base_entry: dict | None = None,
                 head_file: str | None = None, event: dict | None = None) -> State:
    """Write ``head`` as a new head file, then commit by replacing the manifest; returns the new state."""
    m = st.manifest
    generation = int(m["head"].get("generation", 0)) + 1
    version = max(2, st.disk_version)  # version 1 is rewritten as 2; 2 and 3 keep their layout
    path = st.path
    if head_file is None:
        head_file = f"head-{generation:06d}{head_suffix(version)}"
        arrays = head.arrays()
        storage.write_new_file(path / head_file, head_bytes(arrays, version))
        storage.crash_point("after-head")
    else:
        arrays = {k: v for k, v in head.arrays().items()}
    base = base_entry or m["base"]
    new = {k: v for k, v in m.items() if k not in ("files",)}
    new["format_version"] = version
    new["classes"] = list(classes)
    new["head"] = {**m["head"], "file": head_file, "generation": generation, "arrays": array_spec(arrays)}
    new["base"] = base
    new["journal"] = journal_entry
    if event:
        new["events"] = list(m.get("events", [])) + [event]
    files = {onnx_file(m): m["files"][onnx_file(m)]}
    files[base["file"]] = m["files"][base["file"]] if base["file"] in m["files"] else file_entry(path / base["file"])
    files[head_file] = file_entry(path / head_file)
    new["files"] = files
    new = seal(new)
    raw = storage.json_bytes(new)
    storage.atomic_write_bytes(path / MANIFEST_NAME, raw)
    storage.crash_point("after-manifest")
    storage.remove_stale(path, keep={head_file, base["file"], journal_entry["file"]})
    return _remember(State(path, new, version, head, list(classes),
                           Scan([], journal_entry["bytes"], journal_entry["digest"], journal_entry["seq"]), raw=raw))


# A writer's last state of each bundle, with the signatures of the files it was verified from: the next
# update under the lock reuses it when the manifest bytes and the head/base files are unchanged, and only
# reads (and replays) the journal records appended since, instead of re-reading and re-hashing the head.
_WRITER_CACHE: dict[Path, tuple[State, tuple, tuple]] = {}
_WRITER_CACHE_SIZE = 4


def _signature(st: State) -> tuple:
    """Identity of the files a state was verified from: a replaced or rewritten file changes its ctime/inode."""
    sig = []
    for name in (st.manifest["head"]["file"], st.manifest["base"]["file"], st.manifest["journal"]["file"]):
        try:
            s = (st.path / name).stat()
        except FileNotFoundError:
            sig.append(None)
            continue
        sig.append((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
    return tuple(sig)


def _remember(st: State) -> State:
    if st.raw and st.disk_version >= 2 and st.journal_ok and not st.trusted:
        key = st.path.resolve()
        _WRITER_CACHE.pop(key, None)
        while len(_WRITER_CACHE) >= _WRITER_CACHE_SIZE:
            _WRITER_CACHE.pop(next(iter(_WRITER_CACHE)))
        _WRITER_CACHE[key] = (st, _signature(st), signing.current().fingerprint())
    return st


def _cached_state(path: Path) -> State | None:
    """The remembered state of ``path`` brought up to date with the journal, if nothing else changed on disk."""
    hit = _WRITER_CACHE.get(path.resolve())
    if hit is None:
        return None
    st, sig, policy = hit
    if policy != signing.current().fingerprint():
        return None  # verified under other keys: verify again
    try:
        if read_manifest_bytes(path) != st.raw:
            return None
        now = _signature(st)
    except (EdgeclRuntimeError, OSError):
        return None
    if now == sig:
        return st
    if now[:2] != sig[:2]:
        return None  # head or base file replaced or modified: a full, verified read
    # The journal changed (another process appended, or it was damaged): re-read what follows the head
    # snapshot; the records this process knows must still be there, unchanged.
    j, b = st.manifest["journal"], st.manifest["base"]
    jpath = path / j["file"]
    s = journal.read_committed(jpath, j["bytes"], j["seq"], j["digest"], b["id"], b["seq"], full=False)
    known = len(st.lagging)
    if [r.digest for r in s.records[:known]] != [r.digest for r in st.lagging]:
        return None
    if s.discarded:
        log.warning("%s: discarding %d bytes after the last complete journal record (%s)", jpath, s.discarded, s.problem)
    new = s.records[known:]
    signing.verify_records(new, st.lagging[-1].digest if known else j["digest"], str(jpath))
    head, classes = replay(st.head, st.classes, new, str(jpath))
    scan = Scan(st.scan.records + new, s.end, s.digest, s.seq, s.discarded, s.problem)
    return State(path, {**st.manifest, "classes": classes}, st.disk_version, head, classes, scan,
                 st.lagging + new, st.full, True, [], st.raw)


def _locked_state(path: Path, timeout: float | None, full: bool = False, trust_modified: bool = False) -> State:
    st = _cached_state(path) if not full and not trust_modified else None
    if st is None:
        st = read_state(path, verify="state", full=full, trust_modified=trust_modified)
        if not st.journal_ok and not trust_modified:
            raise CorruptBundleError(
                f"{path}: the journal is corrupt; `edgecl compact --trust-modified` folds the head into a new base")
        _remember(st)
    _remove_leftovers(st)
    return st


def _remove_leftovers(st: State) -> None:
    """Delete the files an interrupted update left (unreferenced head, base and journal files; temp files go
    when the lock is taken), so that the next update after a failure starts from a clean directory."""
    m = st.manifest
    keep = {m["head"]["file"], m["base"]["file"], m["journal"]["file"], *m.get("files", {})}
    storage.remove_stale(st.path, keep)


def _snapshot_due(st: State, lagging: list[Record], end: int) -> bool:
    # The first record of a journal file is always snapshotted, so the manifest vouches for the file from then
    # on: a journal deleted later is a MissingFileError, not an empty journal.
    committed = int(st.manifest["journal"]["bytes"])
    return (st.disk_version < 2 or committed == 0 or len(lagging) >= SNAPSHOT_EVERY
            or end - committed >= SNAPSHOT_BYTES)


def commit_records(st: State, records: list[Record], head, classes: list[str], snapshot: bool | None = None) -> State:
    """Write-ahead commit of ``records`` (already applied to give ``head``/``classes``) on a locked state.

    The fsync'd journal append is the commit point. The head file and the manifest are rewritten
    (a snapshot) when ``snapshot`` is true, or by default when the records after the head file reach
    ``SNAPSHOT_EVERY`` / ``SNAPSHOT_BYTES``, for the first record of a journal file, and on the first
    update of a version-1 bundle.
    """
    signing.require_signer(st.path)
    j = st.manifest["journal"]
    jpath = st.path / j["file"]
    end, digest = st.scan.end, st.scan.digest
    if records:
        end, digest = journal.append(jpath, st.scan.end, records, st.scan.digest)
        storage.crash_point("after-journal")
    seq = records[-1].seq if records else st.scan.seq
    lagging = st.lagging + records
    if snapshot or (snapshot is None and _snapshot_due(st, lagging, end)):
        try:
            return _write_state(st, head, classes, {**j, "seq": seq, "bytes": end, "digest": digest})
        except (StorageError, OSError) as exc:
            if not records:
                raise storage.storage_error(exc, f"write a head snapshot of {st.path}") if isinstance(exc, OSError) \
                    else exc
            # The records are committed (fsync'd journal): the snapshot only waits for the next update.
            storage.warn_after_commit(f"{st.path}: the update is committed (journal), but the head snapshot "
                                      f"failed and is postponed to the next update: {exc}")
    scan = Scan(st.scan.records + records, end, digest, seq)
    return _remember(State(st.path, {**st.manifest, "classes": list(classes)}, st.disk_version, head, list(classes),
                           scan, lagging, st.full, True, [], st.raw))


def snapshot(path: str | Path, timeout: float | None = None) -> State:
    """Write the current state as the head file now (the journal records it lags are folded in); journaled updates
    do this every ``SNAPSHOT_EVERY`` records. A no-op when the head file is current."""
    path = Path(path)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout)
        if not st.lagging and st.disk_version >= 2:
            return st
        return commit_records(st, [], st.head, st.classes, snapshot=True)


def reseal(path: str | Path, timeout: float | None = None) -> State:
    """Rewrite the manifest as of now (the journal folded into a head snapshot first): what ``signing.sign_bundle``
    calls under a signing key, so the new manifest carries its signature."""
    path = Path(path)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout)
        if st.lagging or st.disk_version < 2:
            return commit_records(st, [], st.head, st.classes, snapshot=True)
        m, _ = parse_manifest(read_manifest_bytes(path), str(path / MANIFEST_NAME))
        raw = storage.json_bytes(seal(m))
        storage.atomic_write_bytes(path / MANIFEST_NAME, raw)
        _WRITER_CACHE.pop(path.resolve(), None)
        return read_state(path, verify="state", full=False)


def _new_record(st: State, seq_offset: int, op: str, name: str, embeddings=None, **extra) -> Record:
    return Record(st.scan.seq + seq_offset, op, name, new_id()[:16], _now(), embeddings, extra)


def _embeddings(embeddings, dim: int) -> np.ndarray:
    try:
        emb = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"embeddings must be a float array (k, {dim}): {exc}") from exc
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] != dim:
        raise InvalidInputError(f"embeddings must have shape (k >= 1, {dim}), got {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise InvalidInputError("embeddings contain NaN or infinite values")
    return emb


def add_examples(path: str | Path, name: str, embeddings, timeout: float | None = None) -> tuple[State, bool]:
    """Add ``embeddings`` ``(k, D)`` as examples of class ``name`` (new, or extended); journaled.

    This is the head-level update ``Bundle.add_class`` calls after embedding the
    images; it embeds nothing, so it also serves tests and tools that have
    embeddings already. Returns the new state and whether the class is new.
    """
    path = Path(path)
    name = inputs.class_name(name)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout)
        emb = _embeddings(embeddings, int(st.manifest["backbone"]["embedding_dim"]))
        rec = _new_record(st, 1, "add", name, emb)
        head, classes = apply(st.head, st.classes, rec)
        return commit_records(st, [rec], head, classes), name not in st.classes


def add_batch(path: str | Path, items, timeout: float | None = None) -> State:
    """Add several ``(name, embeddings)`` updates as one journal append: all of them are committed, or none
    (a batch cut short by a crash is discarded whole on replay, see ``journal.scan``)."""
    path = Path(path)
    items = [(inputs.class_name(name), emb) for name, emb in items]
    if not items:
        raise InvalidInputError("no updates given")
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout)
        dim = int(st.manifest["backbone"]["embedding_dim"])
        head, classes, records = st.head, st.classes, []
        for name, emb in items:
            rec = _new_record(st, len(records) + 1, "add", name, _embeddings(emb, dim))
            head, classes = apply(head, classes, rec)
            records.append(rec)
        return commit_records(st, records, head, classes)


def remove_class(path: str | Path, name: str, timeout: float | None = None) -> State:
    """Remove class ``name``; journaled.

    The exact inverse of the class's journaled additions: its row goes, and for heads whose classes
    share statistics (``ridge``: the Gram matrix ``G``) the examples added since the base (the
    export, or the last ``compact``) leave them too, so a class added on the device and removed
    again leaves every other score as it was. Examples the base holds (training data, or additions
    folded by ``compact``) are not known to the device: for a class of the base, the removal drops
    its row and its journaled examples, and its base examples stay in ``G`` (the other classes
    still score as ridge regression fitted with them). See docs/bundle-format.md.
    """
    path = Path(path)
    name = inputs.class_name(name)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout, full=True)
        if name not in st.classes:
            raise InvalidInputError(f"no class named {name!r}; the bundle has {len(st.classes)} classes")
        rec = _new_record(st, 1, "remove_class", name, class_rows(st.scan.records, name))
        head, classes = apply(st.head, st.classes, rec)
        return commit_records(st, [rec], head, classes)


def class_rows(records: list[Record], name: str) -> np.ndarray | None:
    """The example embeddings the journal ``records`` added to class ``name`` since it last appeared, or None."""
    rows: list[np.ndarray] = []
    for r in records:
        if r.name != name:
            continue
        if r.op == "remove_class":
            rows = []
        elif r.embeddings is not None:
            rows.append(r.embeddings)
    return np.concatenate(rows).astype(np.float32) if rows else None


def history(path: str | Path) -> dict[str, Any]:
    """Everything that happened to the bundle: base, journaled updates, rollbacks/compactions, legacy v1 history."""
    st = read_state(path, verify="state", full=True)
    m = st.manifest
    committed = m["journal"]["bytes"]
    return {
        "bundle_id": st.bundle_id,
        "format_version": st.disk_version,
        "base": {"id": m["base"]["id"], "seq": m["base"]["seq"], "classes": len(m["base"]["classes"])},
        "updates": [{**r.describe(), "committed": r.end <= committed} for r in st.scan.records],
        "discarded_bytes": st.scan.discarded,
        "events": list(m.get("events", [])) + list(m.get("trust_log", [])),
        "legacy_history": list(m.get("history", [])),
        "seq": st.seq,
        "classes": len(st.classes),
    }


def _read_base(st: State):
    verify_files(st.path, st.manifest, [st.manifest["base"]["file"]])
    limits.check_head_file(st.path / st.manifest["base"]["file"], st.manifest["base"].get("arrays"), "base.arrays")
    return read_head(st.path, st.manifest, "base")


def rollback(path: str | Path, to: int, timeout: float | None = None) -> State:
    """Restore the state after update ``to`` (``base.seq`` = the base itself) by replaying the base + journal.

    Later updates are dropped from the journal (recorded as a ``rollback`` event).
    """
    path = Path(path)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout, full=True)
        signing.require_signer(path)
        m = st.manifest
        lo, hi = m["base"]["seq"], st.seq
        if not isinstance(to, int) or isinstance(to, bool) or not lo <= to <= hi:
            raise InvalidInputError(
                f"--to must be an update number between {lo} (the base) and {hi} (the current state), got {to!r}"
                + ("; earlier states were folded into the base by `compact`" if isinstance(to, int) and to < lo else "")
            )
        base_head, _ = _read_base(st)
        records = [r for r in st.scan.records if r.seq <= to]
        head, classes = replay(base_head, list(m["base"]["classes"]), records, "journal")
        old = m["journal"]
        new_name = f"journal-{_journal_epoch(old['file']) + 1:06d}.log"
        end = records[-1].end if records else 0
        digest = records[-1].digest if records else journal.genesis(m["base"]["id"])
        journal.write_prefix(path / old["file"], path / new_name, end)
        event = {"event": "rollback", "from": hi, "to": to, "time": _now()}
        return _write_state(st, head, classes, {"file": new_name, "seq": to, "bytes": end, "digest": digest}, event=event)


def compact(path: str | Path, timeout: float | None = None, trust_modified: bool = False) -> State:
    """Fold the journal into a new base (the current head), leaving an empty journal.

    The new base remembers the ids of the updates folded into it, so a later
    merge does not apply them twice. Rollback cannot go back past a compaction.
    """
    path = Path(path)
    with storage.locked(path, timeout):
        st = _locked_state(path, timeout, full=True, trust_modified=trust_modified)
        signing.require_signer(path)
        m = st.manifest
        ids = sorted(known_ids(st))
        generation = int(m["head"].get("generation", 0)) + 1
        version = max(2, st.disk_version)
        base_file = f"base-{generation:06d}{head_suffix(version)}"
        arrays = st.head.arrays()
        id_array = np.array([int(i, 16) for i in ids], dtype=np.uint64)
        storage.write_new_file(path / base_file, head_bytes({**arrays, RECORD_IDS: id_array}, version))
        base_id = new_id()
        base = {"id": base_id, "file": base_file, "seq": st.seq, "classes": list(st.classes), "arrays": array_spec(arrays)}
        jname = f"journal-{_journal_epoch(m['journal']['file']) + 1:06d}.log"
        jentry = {"file": jname, "seq": st.seq, "bytes": 0, "digest": journal.genesis(base_id)}
        event = {"event": "compact", "seq": st.seq, "records": len(st.scan.records), "time": _now()}
        return _write_state(st, st.head, st.classes, jentry, base_entry=base, head_file=base_file, event=event)


def known_ids(st: State) -> set[str]:
    """Ids of every update the state includes: folded into its base, or in its journal."""
    _, arrays = _read_base(st)
    folded = arrays.get(RECORD_IDS, np.zeros(0, np.uint64))
    return {f"{int(i):016x}" for i in folded} | {r.id for r in st.scan.records}


def merge(a: str | Path, b: str | Path, out: str | Path | None = None, timeout: float | None = None) -> State:
    """Merge the updates of bundle ``b`` into bundle ``a`` (in place, or into a new bundle ``out``).

    Both must come from the same export (same ``bundle_id``). The result is ``a``'s
    state plus a replay of ``b``'s updates that ``a`` does not have (by update
    id), so it equals one device having seen both devices' examples; merging
    twice changes nothing. ``b`` must still hold, in its journal, every update
    since the state ``a`` starts from (do not compact ``b`` before merging).
    """
    a, b = Path(a), Path(b)
    sb = read_state(b, verify="state", full=True)
    if out is None or Path(out).resolve() == a.resolve():
        with storage.locked(a, timeout):
            return _merge_into(_locked_state(a, timeout, full=True), sb, b)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"merge output {out} exists and is not empty")
    storage.remove_dead_temps(out.parent, f".{out.name}.")  # of a merge that was killed
    try:
        return _merge_to_new(a, b, sb, out, timeout)
    except OSError as exc:
        raise storage.storage_error(exc, f"write the merged bundle {out}") from exc


def _merge_to_new(a: Path, b: Path, sb: State, out: Path, timeout: float | None) -> State:
    """Merge into a copy of ``a`` in a temporary directory next to ``out``, renamed to ``out`` when complete
    (the commit point); the temporary directory is removed on any failure."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=storage.TMP_SUFFIX, dir=out.parent))
    try:
        with storage.locked(a, timeout):
            sa = _locked_state(a, timeout, full=True)
            _check_mergeable(sa, sb, b)
            names = [onnx_file(sa.manifest), sa.manifest["base"]["file"], sa.manifest["head"]["file"],
                     sa.manifest["journal"]["file"], MANIFEST_NAME]
            for name in dict.fromkeys(names):
                if (a / name).is_file():
                    storage.copy_file(a / name, tmp / name)
        with storage.locked(tmp, timeout):
            st = _merge_into(_locked_state(tmp, timeout, full=True), sb, b)
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
    _WRITER_CACHE.pop(tmp.resolve(), None)
    st.path = out
    return st


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_mergeable(sa: State, sb: State, b: Path) -> set[str]:
    if sa.bundle_id != sb.bundle_id:
        raise IncompatibleBundleError(
            f"cannot merge {b} into {sa.path}: they come from different exports (bundle_id {sb.bundle_id} vs "
            f"{sa.bundle_id}); only bundles grown from the same export merge"
        )
    known = known_ids(sa)
    _, b_base = _read_base(sb)
    b_folded = {f"{int(i):016x}" for i in b_base.get(RECORD_IDS, np.zeros(0, np.uint64))}
    if not b_folded <= known:
        raise IncompatibleBundleError(
            f"cannot merge {b}: it was compacted after {len(b_folded - known)} update(s) that {sa.path} does not "
            "have, so their examples are gone; merge before compacting, or merge the other way round"
        )
    return known


def _merge_into(sa: State, sb: State, b: Path) -> State:
    known = _check_mergeable(sa, sb, b)
    head, classes, records = sa.head, sa.classes, []
    for r in sb.scan.records:
        if r.id in known:
            continue
        extra = {k: v for k, v in r.extra.items() if k not in ("batch", "sig")}  # this append's own
        emb = class_rows(sa.scan.records + records, r.name) if r.op == "remove_class" else r.embeddings
        rec = Record(sa.seq + len(records) + 1, r.op, r.name, r.id, r.time, emb, {**extra, "merged_from": str(b)})
        if r.op == "remove_class" and r.name not in classes:
            continue  # already gone on this side
        try:
            head, classes = apply(head, classes, rec, strict=False)
        except EdgeclRuntimeError as exc:
            raise IncompatibleBundleError(f"cannot merge update {r.seq} of {b} ({r.op} {r.name!r}): {exc}") from exc
        records.append(rec)
    return commit_records(sa, records, head, classes)


def bundle_bytes(path: str | Path) -> int:
    """Total size of a bundle's files (not the lock or the onnxruntime cache)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.name != storage.LOCK_NAME)


def snapshot_files(path: str | Path) -> dict[str, str]:
    """sha256 of every file of a bundle directory (not the lock or the onnxruntime cache): for tests and tools."""
    from .manifest import sha256_file

    path = Path(path)
    return {
        p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != storage.LOCK_NAME
    }


__all__ = [
    "State", "add_batch", "add_examples", "apply", "commit_records", "compact", "history", "initial_fields", "known_ids",
    "merge", "read_head", "read_state", "remove_class", "replay", "rollback", "snapshot", "snapshot_files",
    "bundle_bytes",
]
