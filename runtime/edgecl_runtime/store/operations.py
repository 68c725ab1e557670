"""Operations on a bundle directory: add examples, remove a class, rollback, compact, sign.

Every function works on a bundle directory and only through the ``Head``
interface (``with_examples``, ``without_class``, ``arrays``, ``from_arrays``),
so it is the same for every head kind; each takes the bundle's lock and commits
through ``commits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import inputs, journal, signing, storage
from ..errors import InvalidInputError
from ..manifest import FORMAT_VERSION, array_spec
from .commits import commit_records, journal_epoch, locked_state, new_record, reseal, write_state
from .reads import (
    RECORD_IDS, State, apply, class_rows, head_bytes, head_suffix, known_ids, new_id, now, read_base, replay,
)


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
        st = locked_state(path, timeout)
        emb = _embeddings(embeddings, int(st.manifest["backbone"]["embedding_dim"]))
        rec = new_record(st, 1, "add", name, emb)
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
        st = locked_state(path, timeout)
        dim = int(st.manifest["backbone"]["embedding_dim"])
        head, classes, records = st.head, st.classes, []
        for name, emb in items:
            rec = new_record(st, len(records) + 1, "add", name, _embeddings(emb, dim))
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
        st = locked_state(path, timeout, full=True)
        if name not in st.classes:
            raise InvalidInputError(f"no class named {name!r}; the bundle has {len(st.classes)} classes")
        rec = new_record(st, 1, "remove_class", name, class_rows(st.scan.records, name))
        head, classes = apply(st.head, st.classes, rec)
        return commit_records(st, [rec], head, classes)



def rollback(path: str | Path, to: int, timeout: float | None = None) -> State:
    """Restore the state after update ``to`` (``base.seq`` = the base itself) by replaying the base + journal.

    Later updates are dropped from the journal (recorded as a ``rollback`` event).
    """
    path = Path(path)
    with storage.locked(path, timeout):
        st = locked_state(path, timeout, full=True)
        signing.require_signer(path)
        m = st.manifest
        lo, hi = m["base"]["seq"], st.seq
        if not isinstance(to, int) or isinstance(to, bool) or not lo <= to <= hi:
            raise InvalidInputError(
                f"--to must be an update number between {lo} (the base) and {hi} (the current state), got {to!r}"
                + ("; earlier states were folded into the base by `compact`" if isinstance(to, int) and to < lo else "")
            )
        base_head, _ = read_base(st)
        records = [r for r in st.scan.records if r.seq <= to]
        head, classes = replay(base_head, list(m["base"]["classes"]), records, "journal")
        old = m["journal"]
        new_name = f"journal-{journal_epoch(old['file']) + 1:06d}.log"
        end = records[-1].end if records else 0
        digest = records[-1].digest if records else journal.genesis(m["base"]["id"])
        journal.write_prefix(path / old["file"], path / new_name, end)
        event = {"event": "rollback", "from": hi, "to": to, "time": now()}
        return write_state(st, head, classes, {"file": new_name, "seq": to, "bytes": end, "digest": digest}, event=event)


def compact(path: str | Path, timeout: float | None = None, trust_modified: bool = False) -> State:
    """Fold the journal into a new base (the current head), leaving an empty journal.

    The new base remembers the ids of the updates folded into it, so a later
    merge does not apply them twice. Rollback cannot go back past a compaction.
    """
    path = Path(path)
    with storage.locked(path, timeout):
        st = locked_state(path, timeout, full=True, trust_modified=trust_modified)
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
        jname = f"journal-{journal_epoch(m['journal']['file']) + 1:06d}.log"
        jentry = {"file": jname, "seq": st.seq, "bytes": 0, "digest": journal.genesis(base_id)}
        event = {"event": "compact", "seq": st.seq, "records": len(st.scan.records), "time": now()}
        return write_state(st, st.head, st.classes, jentry, base_entry=base, head_file=base_file, event=event)



def sign_bundle(path: str | Path, key, timeout: float | None = None) -> str:
    """Sign the bundle at ``path`` with ``key`` (a path, PEM or key object): fold the journal into a head
    snapshot and sign the manifest. Returns the key id."""
    key = signing.load_private_key(key)
    with signing.using(signing.Policy((), key)):
        reseal(path, timeout)
    return signing.key_id(key.public_key())
