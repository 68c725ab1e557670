"""The update half of a bundle: consistent reads, journaled updates, history, rollback, compaction, merge.

Three parts, one module each: ``reads`` (a consistent ``State`` of a bundle,
read without the lock; ``apply``, the one update rule), ``commits`` (the
write-ahead journal append, head snapshots, the writer's cache) and
``operations`` (add, remove, rollback, compact, sign); ``merging`` merges
bundles grown from one export (two, or a fleet), ``compare`` diffs two bundles.
This package re-exports their public names, so ``edgecl_runtime.store.add_examples``
and friends are the API.

``SNAPSHOT_EVERY`` and ``SNAPSHOT_BYTES`` (the head-snapshot policy, see
``commits``) can be set on this package: the value is handed to ``commits``.
"""

from __future__ import annotations

import sys
import types

from . import commits, compare, merging, operations, reads
from .commits import _WRITER_CACHE, SNAPSHOT_BYTES, SNAPSHOT_EVERY, commit_records, reseal, snapshot
from .compare import diff
from .merging import merge
from .operations import add_batch, add_examples, compact, initial_fields, remove_class, rollback, sign_bundle
from .reads import (
    RECORD_IDS,
    State,
    apply,
    bundle_bytes,
    class_rows,
    head_bytes,
    head_suffix,
    history,
    known_ids,
    new_id,
    read_head,
    read_state,
    replay,
    snapshot_files,
)

_POLICY = ("SNAPSHOT_EVERY", "SNAPSHOT_BYTES")


class _StoreModule(types.ModuleType):
    """This package as a module whose snapshot-policy attributes are ``commits``'s (tests and tools set them here)."""

    def __setattr__(self, name, value):
        if name in _POLICY:
            setattr(commits, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _StoreModule

__all__ = [
    "RECORD_IDS", "SNAPSHOT_BYTES", "SNAPSHOT_EVERY", "State", "add_batch", "add_examples", "apply", "bundle_bytes",
    "class_rows", "commit_records", "commits", "compact", "compare", "diff", "head_bytes", "head_suffix", "history",
    "initial_fields", "known_ids", "merge", "merging", "new_id", "operations", "read_head", "read_state", "reads",
    "remove_class", "replay", "reseal", "rollback", "sign_bundle", "snapshot", "snapshot_files",
]
