"""Reads of a bundle's state: a consistent view (manifest, head, journal tail) taken without the lock.

A bundle's state is its *base* head (the export, or the last compaction) plus
the *journal* of updates since (``edgecl_runtime.journal``); the *head file* is
a snapshot of base + journal up to the manifest's ``journal.seq``, and the
records after it are replayed on every read. Readers take no lock: they read
the manifest, the files it names and the journal tail, then check that the
manifest did not change meanwhile (else retry), so they see the old or the new
state, never a mix. ``apply`` is the one update rule for new updates, replay
and merge.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import journal, limits, signing, storage, tensors
from ..errors import (
    CorruptBundleError,
    EdgeclRuntimeError,
    InvalidInputError,
    MissingFileError,
    TamperedFileError,
)
from ..heads import head_class
from ..journal import Record, Scan
from ..manifest import (
    MANIFEST_NAME,
    array_spec,
    check_seal,
    file_entry,
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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_id() -> str:
    return uuid.uuid4().hex


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
    journal.verify_signatures(lagging, j["digest"], str(jpath))
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
        "time": now(),
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


def read_base(st: State):
    verify_files(st.path, st.manifest, [st.manifest["base"]["file"]])
    limits.check_head_file(st.path / st.manifest["base"]["file"], st.manifest["base"].get("arrays"), "base.arrays")
    return read_head(st.path, st.manifest, "base")


def known_ids(st: State) -> set[str]:
    """Ids of every update the state includes: folded into its base, or in its journal."""
    _, arrays = read_base(st)
    folded = arrays.get(RECORD_IDS, np.zeros(0, np.uint64))
    return {f"{int(i):016x}" for i in folded} | {r.id for r in st.scan.records}



def bundle_bytes(path: str | Path) -> int:
    """Total size of a bundle's files (not the lock or the onnxruntime cache)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.name != storage.LOCK_NAME)


def snapshot_files(path: str | Path) -> dict[str, str]:
    """sha256 of every file of a bundle directory (not the lock or the onnxruntime cache): for tests and tools."""
    from ..manifest import sha256_file

    path = Path(path)
    return {
        p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != storage.LOCK_NAME
    }

