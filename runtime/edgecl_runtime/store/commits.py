"""Commits of a bundle's updates: the write-ahead journal append, head snapshots, the writer's cache.

An update is committed by its fsync'd journal record; the head file and the
manifest are rewritten only every ``SNAPSHOT_EVERY`` records (a *head
snapshot*), so a head state that lags the journal is never a lost update.
Writers hold the bundle's lock (``storage.locked``) and re-read the state from
disk (``locked_state``), so a stale in-memory ``Bundle`` never loses another
process's update.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import card, journal, signing, storage
from ..errors import CorruptBundleError, EdgeclRuntimeError, StorageError
from ..journal import Record, Scan
from ..manifest import MANIFEST_NAME, array_spec, file_entry, fixed_files, parse_manifest, read_manifest_bytes, seal
from .reads import State, head_bytes, head_suffix, log, new_id, now, read_state, replay

# Head snapshots: an update is committed by its fsync'd journal record; the head file (and the manifest
# naming it) is rewritten only when this many records, or this many journal bytes, lag behind it, so an
# update costs one append + fsync instead of a head file and a manifest (measured in
# benchmarks/bench_update.py; see docs/bundle-format.md). Loads replay at most this much. 1 = every update.
SNAPSHOT_EVERY = 32
SNAPSHOT_BYTES = 1 << 20


def journal_epoch(name: str) -> int:
    match = re.fullmatch(r"journal-(\d+)\.log", name)
    return int(match.group(1)) if match else 0


def write_state(st: State, head, classes: list[str], journal_entry: dict, base_entry: dict | None = None,
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
    files = {name: m["files"][name] for name in fixed_files(m)}
    files[base["file"]] = m["files"][base["file"]] if base["file"] in m["files"] else file_entry(path / base["file"])
    files[head_file] = file_entry(path / head_file)
    new["files"] = files
    new = seal(new)
    raw = storage.json_bytes(new)
    storage.atomic_write_bytes(path / MANIFEST_NAME, raw)
    storage.crash_point("after-manifest")
    storage.remove_stale(path, keep={head_file, base["file"], journal_entry["file"]})
    return committed(State(path, new, version, head, list(classes),
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


def committed(st: State) -> State:
    """``st``, just committed: the bundle's model card is rewritten from it (``card.refresh``: after the commit
    point, a failure only logs) and it becomes this writer's remembered state."""
    card.refresh(st)
    return _remember(st)


def forget(path: Path) -> None:
    """Drop the writer's remembered state of ``path`` (after writing it other than through ``write_state``)."""
    _WRITER_CACHE.pop(Path(path).resolve(), None)


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
        seen = _signature(st)
    except (EdgeclRuntimeError, OSError):
        return None
    if seen == sig:
        return st
    if seen[:2] != sig[:2]:
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
    journal.verify_signatures(new, st.lagging[-1].digest if known else j["digest"], str(jpath))
    head, classes = replay(st.head, st.classes, new, str(jpath))
    scan = Scan(st.scan.records + new, s.end, s.digest, s.seq, s.discarded, s.problem)
    return State(path, {**st.manifest, "classes": classes}, st.disk_version, head, classes, scan,
                 st.lagging + new, st.full, True, [], st.raw)


def locked_state(path: Path, timeout: float | None, full: bool = False, trust_modified: bool = False) -> State:
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


def snapshot_due(st: State, lagging: int, end: int) -> bool:
    """Whether ``lagging`` records after the head file, the journal ending at byte ``end``, call for a snapshot."""
    # The first record of a journal file is always snapshotted, so the manifest vouches for the file from then
    # on: a journal deleted later is a MissingFileError, not an empty journal.
    committed = int(st.manifest["journal"]["bytes"])
    return (st.disk_version < 2 or committed == 0 or lagging >= SNAPSHOT_EVERY
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
    if snapshot or (snapshot is None and snapshot_due(st, len(lagging), end)):
        try:
            return write_state(st, head, classes, {**j, "seq": seq, "bytes": end, "digest": digest})
        except (StorageError, OSError) as exc:
            if not records:
                raise storage.storage_error(exc, f"write a head snapshot of {st.path}") if isinstance(exc, OSError) \
                    else exc
            # The records are committed (fsync'd journal): the snapshot only waits for the next update.
            storage.warn_after_commit(f"{st.path}: the update is committed (journal), but the head snapshot "
                                      f"failed and is postponed to the next update: {exc}")
    scan = Scan(st.scan.records + records, end, digest, seq)
    return committed(State(st.path, {**st.manifest, "classes": list(classes)}, st.disk_version, head, list(classes),
                           scan, lagging, st.full, True, [], st.raw))


def snapshot(path: str | Path, timeout: float | None = None) -> State:
    """Write the current state as the head file now (the journal records it lags are folded in); journaled updates
    do this every ``SNAPSHOT_EVERY`` records. A no-op when the head file is current."""
    path = Path(path)
    with storage.locked(path, timeout):
        st = locked_state(path, timeout)
        if not st.lagging and st.disk_version >= 2:
            return st
        return commit_records(st, [], st.head, st.classes, snapshot=True)


def reseal(path: str | Path, timeout: float | None = None) -> State:
    """Rewrite the manifest as of now (the journal folded into a head snapshot first): what ``sign_bundle``
    calls under a signing key, so the new manifest carries its signature."""
    path = Path(path)
    with storage.locked(path, timeout):
        st = locked_state(path, timeout)
        if st.lagging or st.disk_version < 2:
            return commit_records(st, [], st.head, st.classes, snapshot=True)
        m, _ = parse_manifest(read_manifest_bytes(path), str(path / MANIFEST_NAME))
        raw = storage.json_bytes(seal(m))
        storage.atomic_write_bytes(path / MANIFEST_NAME, raw)
        forget(path)
        return read_state(path, verify="state", full=False)



def new_record(st: State, seq_offset: int, op: str, name: str, embeddings=None, **extra) -> Record:
    return Record(st.scan.seq + seq_offset, op, name, new_id()[:16], now(), embeddings, extra)

