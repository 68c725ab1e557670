"""The write-ahead journal of a bundle: every on-device update, as a checksummed, hash-chained record.

Why: a class a user taught the device must survive a power cut at any
instant, and two devices' updates must merge exactly. So each update (add or
extend a class, remove a class; merged updates too) is first appended here
with what is needed to replay it on *any* head kind (the class name and the
example embeddings as float32), fsync'd, and only then applied to the head
state. Replaying the base head state plus the journal reproduces the current
head; that gives history, rollback, compaction and merge.

Record layout (little-endian)::

    b"ECJ1" | payload length: u32 | digest: 32 bytes | payload
    payload = header JSON (ASCII, no newline) | b"\\n" | float32 embeddings (row-major)
    digest  = sha256(previous digest | payload)

The digest chains every record to the previous one, starting from
``genesis(base_id)``, so a record cannot be altered, dropped or moved without
the chain breaking, and a journal cannot be grafted onto another base. The
manifest stores the byte offset, sequence number and digest of the last record
the head state includes (the commit point); a record that is incomplete or
fails its digest *after* that point is a torn write and is discarded; one
*before* it is corruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import inputs, limits, signing, storage
from .errors import CorruptBundleError, MissingFileError, StorageError

MAGIC = b"ECJ1"
_PREFIX = struct.Struct("<4sI32s")  # magic, payload length, digest
MAX_PAYLOAD = 1 << 30
OPS = ("add", "remove_class")


def genesis(base_id: str) -> str:
    """The digest a journal's first record chains from: binds the journal to its base state."""
    return hashlib.sha256(b"edgecl-journal\0" + base_id.encode("utf-8")).hexdigest()


@dataclass
class Record:
    """One update: ``op`` (``add`` | ``remove_class``) on class ``name``, with embeddings for ``add``."""

    seq: int
    op: str
    name: str
    id: str  # 16 hex digits, unique per update: merge uses it to skip updates a bundle already has
    time: str
    embeddings: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. merged_from
    end: int = 0  # byte offset just after this record in its journal file
    digest: str = ""

    def header(self) -> dict[str, Any]:
        h = {"seq": self.seq, "op": self.op, "class": self.name, "id": self.id, "time": self.time, **self.extra}
        if self.embeddings is not None:
            h["shape"] = [int(n) for n in self.embeddings.shape]
        return h

    def describe(self) -> dict[str, Any]:
        """What ``edgecl history`` shows of the record."""
        d = {"seq": self.seq, "op": self.op, "class": self.name, "id": self.id, "time": self.time}
        if self.embeddings is not None:
            d["examples"] = int(self.embeddings.shape[0])
        return {**d, **self.extra}


def body_bytes(record: Record) -> bytes:
    """The record's embeddings as stored (float32 LE, row-major), empty without."""
    if record.embeddings is None:
        return b""
    return np.ascontiguousarray(record.embeddings, dtype="<f4").tobytes()


def encode(record: Record, prev_digest: str) -> tuple[bytes, str]:
    """Bytes of ``record`` chained after ``prev_digest`` (signed when a signing key is configured), and its digest."""
    body = body_bytes(record)
    record.extra.pop(signing.RECORD_FIELD, None)
    sig = signing.sign_record(prev_digest, record.header(), body)
    if sig is not None:
        record.extra[signing.RECORD_FIELD] = sig
    header = json.dumps(record.header(), ensure_ascii=True, sort_keys=True).encode("ascii")
    payload = header + b"\n" + body
    digest = hashlib.sha256(bytes.fromhex(prev_digest) + payload).digest()
    return _PREFIX.pack(MAGIC, len(payload), digest) + payload, digest.hex()


def _decode_payload(payload: bytes, where: str) -> Record:
    nl = payload.find(b"\n")
    if nl < 0:
        raise ValueError("no header")
    h = limits.json_loads(payload[:nl].decode("ascii"), "journal record header")
    body = payload[nl + 1 :]
    if not isinstance(h, dict) or h.get("op") not in OPS or not isinstance(h.get("class"), str):
        raise ValueError(f"bad header {h!r}")
    if inputs.class_name(h["class"]) != h["class"]:  # an InvalidInputError is a ValueError too
        raise ValueError(f"class name {h['class']!r} is not in normal form")
    if not all(isinstance(h.get(k), t) for k, t in (("seq", int), ("id", str), ("time", str))):
        raise ValueError(f"bad header {h!r}")
    emb = None
    if "shape" in h:
        shape = tuple(int(n) for n in h["shape"])
        if len(shape) != 2 or shape[0] < 1 or 4 * shape[0] * shape[1] != len(body):
            raise ValueError(f"embedding shape {shape} does not match {len(body)} bytes")
        emb = np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32)
    elif body:
        raise ValueError("unexpected data after the header")
    extra = {k: v for k, v in h.items() if k not in ("seq", "op", "class", "id", "time", "shape")}
    return Record(h["seq"], h["op"], h["class"], h["id"], h["time"], emb, extra)


@dataclass
class Scan:
    """The valid records of a journal from some offset, and what follows them."""

    records: list[Record]
    end: int  # offset after the last valid record
    digest: str  # digest of the last valid record (the start digest if none)
    seq: int  # seq of the last valid record (the start seq if none)
    discarded: int = 0  # bytes after ``end``: a torn or corrupt tail
    problem: str = ""  # why the tail was not read


def scan(path: Path, start: int, start_digest: str, start_seq: int) -> Scan:
    """Read the records of ``path`` from byte ``start``, following the digest chain.

    Stops at the first record that is incomplete, has a bad magic, length,
    digest, header or sequence number; what follows is reported as
    ``discarded`` bytes with the ``problem``. A missing file is an empty journal.
    """
    try:
        data = storage.read_regular(path, start)
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise CorruptBundleError(f"cannot read journal {path}: {exc}") from exc
    out = Scan([], start, start_digest, start_seq)
    pos = 0
    batch: tuple | None = None  # (records, end, digest, seq, pos) before an open multi-record batch
    while pos < len(data):
        in_batch = len(out.records) - batch[0] if batch else None
        problem, rec, n, digest = _next_record(data, pos, out, path, in_batch)
        if problem:
            if _followed_by_chain(data, pos, out.digest):
                raise CorruptBundleError(
                    f"journal {path}: the record at byte {start + pos} is damaged ({problem}) but later records "
                    "continue the chain, so it was written completely: the journal is corrupt or tampered"
                )
            out.discarded, out.problem = len(data) - pos, f"{problem} at byte {start + pos}"
            break
        if "batch" in rec.extra and rec.extra["batch"][0] == 1:
            batch = (len(out.records), out.end, out.digest, out.seq, pos)
        pos += _PREFIX.size + n
        rec.end, rec.digest = start + pos, digest.hex()
        out.records.append(rec)
        out.end, out.digest, out.seq = rec.end, rec.digest, rec.seq
        if "batch" in rec.extra and rec.extra["batch"][0] == rec.extra["batch"][1]:
            batch = None
    if batch is not None:
        _drop_open_batch(out, batch, len(data))
    return out


def _next_record(data: bytes, pos: int, out: Scan, path: Path, in_batch: int | None):
    """``(problem, record, payload length, digest)`` of the record at ``pos`` chained after ``out``."""
    if len(data) - pos < _PREFIX.size:
        return "incomplete record prefix", None, 0, b""
    magic, n, digest = _PREFIX.unpack_from(data, pos)
    payload = data[pos + _PREFIX.size : pos + _PREFIX.size + n]
    if magic != MAGIC or n > MAX_PAYLOAD:
        return "bad record marker", None, n, digest
    if len(payload) < n:
        return "incomplete record", None, n, digest
    if hashlib.sha256(bytes.fromhex(out.digest) + payload).digest() != digest:
        return "digest mismatch", None, n, digest
    try:
        rec = _decode_payload(payload, str(path))
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable record ({exc})", None, n, digest
    if rec.seq != out.seq + 1:
        return f"sequence number {rec.seq} after {out.seq}", rec, n, digest
    return _batch_problem(rec, in_batch is not None, in_batch or 0), rec, n, digest


def _drop_open_batch(out: Scan, batch: tuple, size: int) -> None:
    """A multi-record append cut short: all or nothing, so none of it (its bytes become the discarded tail)."""
    n_done = len(out.records) - batch[0]
    del out.records[batch[0] :]
    out.end, out.digest, out.seq = batch[1], batch[2], batch[3]
    out.discarded = size - batch[4]
    out.problem = (f"incomplete batch of updates at byte {out.end} ({n_done} records)"
                   + (f", then {out.problem}" if out.problem else ""))


def _batch_problem(rec: Record, open_batch: bool, done: int) -> str:
    """Why ``rec`` cannot follow the records read so far, as far as multi-record batches go ("" if it can)."""
    b = rec.extra.get("batch")
    if b is None:
        return "a record outside the open batch" if open_batch else ""
    if not (isinstance(b, list) and len(b) == 2 and all(type(x) is int for x in b) and 1 <= b[0] <= b[1]):
        return f"bad batch marker {b!r}"
    expected = done + 1 if open_batch else 1
    return "" if b[0] == expected else f"batch record {b[0]} where {expected} was due"


def _followed_by_chain(data: bytes, pos: int, prev_digest: str, limit: int = 1000) -> bool:
    """Whether a valid record chained to the (damaged) record at ``pos`` follows it in ``data``.

    A torn write only damages the end of the last append; a damaged record that a later, valid record
    chains from was complete (it was fsync'd before that one was appended), so it is corruption. The later
    record chains from the damaged one's stored digest, or from the digest of its actual bytes.
    """
    stored = data[pos + 8 : pos + _PREFIX.size] if len(data) - pos >= _PREFIX.size else b""
    q = pos
    for _ in range(limit):
        q = data.find(MAGIC, q + 1)
        if q < 0 or len(data) - q < _PREFIX.size:
            return False
        _, n, digest = _PREFIX.unpack_from(data, q)
        payload = data[q + _PREFIX.size : q + _PREFIX.size + n]
        if n > MAX_PAYLOAD or len(payload) < n:
            continue
        actual = hashlib.sha256(bytes.fromhex(prev_digest) + data[pos + _PREFIX.size : q]).digest()
        if any(hashlib.sha256(d + payload).digest() == digest for d in (stored, actual) if d):
            return True
    return False


def read_committed(path: Path, committed_bytes: int, committed_seq: int, committed_digest: str,
                   base_id: str, base_seq: int, full: bool) -> Scan:
    """Records of a journal whose first ``committed_bytes`` the manifest vouches for.

    ``full``: read and check the chain from the start (history, rollback, merge,
    verified loads); else read only the tail after the commit point. Raises
    ``CorruptBundleError`` if the committed part is missing or does not match the
    manifest; an invalid tail after it is returned as ``discarded``.
    """
    if committed_bytes and not path.is_file():
        raise MissingFileError(f"bundle file missing: {path} (the manifest records {committed_bytes} journal bytes)")
    if full:
        s = scan(path, 0, genesis(base_id), base_seq)
        committed = [r for r in s.records if r.end <= committed_bytes]
        last = committed[-1] if committed else None
        ok = (last.end, last.seq, last.digest) == (committed_bytes, committed_seq, committed_digest) if last else (
            committed_bytes == 0 and committed_seq == base_seq and committed_digest == genesis(base_id)
        )
        if not ok:
            raise CorruptBundleError(
                f"journal {path} does not match the manifest's commit point (journal.bytes={committed_bytes}, "
                f"journal.seq={committed_seq}): {s.problem or 'records differ'}; the journal is corrupt or tampered"
            )
        return s
    size = path.stat().st_size if path.is_file() else 0
    if size < committed_bytes:
        raise CorruptBundleError(
            f"journal {path} has {size} bytes but the manifest records {committed_bytes} (truncated)"
        )
    return scan(path, committed_bytes, committed_digest, committed_seq)


def encode_batch(records: list[Record], prev_digest: str) -> tuple[list[bytes], str]:
    """The bytes of ``records`` chained after ``prev_digest`` (marked as one batch when several), and the last digest.

    Several records are marked ``batch: [i, n]``: a reader applies them all or, when the append was
    cut short, none (``scan``), so a merge is never half applied.
    """
    chunks = []
    digest = prev_digest
    for i, rec in enumerate(records):
        if len(records) > 1:
            rec.extra["batch"] = [i + 1, len(records)]
        data, digest = encode(rec, digest)
        chunks.append(data)
        rec.digest = digest
    return chunks, digest


def append(path: Path, keep_bytes: int, records: list[Record], prev_digest: str, sync: bool = True) -> tuple[int, str]:
    """Write ``records`` after the first ``keep_bytes`` of ``path`` (dropping any torn tail) and fsync
    (``sync=False``: no fsync, for a journal of a bundle not yet committed, which is fsync'd once at the end).

    Returns the new end offset and digest. This is the write-ahead step: once it
    returns, the records are durable and will be replayed even if the process
    dies before the head state is replaced. If a write or the fsync fails, the
    journal is cut back to ``keep_bytes`` (or the new file removed) and
    ``StorageError`` is raised: the update is not committed.
    """
    chunks, digest = encode_batch(records, prev_digest)
    data = b"".join(chunks)
    created = False
    try:
        try:
            fd = storage.open_regular(path, os.O_RDWR)
        except FileNotFoundError:
            fd = storage.open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            created = True
    except OSError as exc:
        raise storage.storage_error(exc, f"open the journal {path}") from exc
    try:
        _write_records(fd, path, keep_bytes, data, created, sync)
    except OSError as exc:
        _undo_append(fd, path, keep_bytes, created)
        raise storage.storage_error(exc, f"append to the journal {path}") from exc
    finally:
        os.close(fd)
    end = keep_bytes
    for rec, chunk in zip(records, chunks):
        end += len(chunk)
        rec.end = end
    return end, digest


def _write_records(fd: int, path: Path, keep_bytes: int, data: bytes, created: bool, sync: bool = True) -> None:
    if os.fstat(fd).st_size != keep_bytes:
        storage.sys_truncate(fd, keep_bytes)  # drop a torn tail
    half = len(data) // 2
    storage.write_all(fd, memoryview(data)[:half], keep_bytes)
    storage.crash_point(f"mid-write:{path.name}")
    storage.write_all(fd, memoryview(data)[half:], keep_bytes + half)
    if sync:
        storage.fsync_fd(fd)
        if created:
            storage.fsync_dir(path.parent)


def _undo_append(fd: int, path: Path, keep_bytes: int, created: bool) -> None:
    """Take back a failed append, so that no reader ever replays it (the caller then raises)."""
    try:
        if created:
            os.unlink(path)
        else:
            os.ftruncate(fd, keep_bytes)
            os.fsync(fd)
    except OSError as exc:  # cannot happen on a full disk (shrinking frees space); say what is known
        raise StorageError(
            f"appending to the journal {path} failed and could not be taken back ({exc}); the update may "
            "have been committed: reload the bundle and check its classes before retrying", exc.errno
        ) from exc


def write_prefix(src: Path, dst: Path, nbytes: int) -> None:
    """A new journal file ``dst`` holding the first ``nbytes`` of ``src`` (for rollback), atomically."""
    data = storage.read_regular(src, 0, nbytes) if nbytes else b""
    storage.atomic_write_bytes(dst, data)


def verify_signatures(records, prev_digest: str, where: str) -> None:
    """Under an active policy, refuse records (after the snapshot point) not signed by a trusted key."""
    policy = signing.current()
    if not policy.active:
        return
    for rec in records:
        header = rec.header()
        signing.verify_entry(header.get(signing.RECORD_FIELD), signing.record_message(prev_digest, header, body_bytes(rec)),
                f"{where}: update {rec.seq} ({rec.op} {rec.name!r})", policy)
        prev_digest = rec.digest
