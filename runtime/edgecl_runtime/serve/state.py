"""The served bundle: a ``Bundle`` shared by the server's threads, refreshed before every read.

Reads (predict, classes, history) refresh the in-memory state first
(``Bundle.refresh``), so every browser tab, and every other process writing the
bundle, sees the same classes. Updates go through ``edgecl_runtime.store`` (the
bundle's own lock and journal); one lock in this process also makes "create"
refuse a name another tab is creating at the same moment.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import zipfile
from pathlib import Path

import numpy as np

from .. import inputs, signing, storage, store
from ..bundle import Bundle
from ..card import CARD_NAME
from ..manifest import MANIFEST_NAME
from .errors import bad_request, conflict, not_found, too_large
from .thumbs import Thumbs
from .uploads import MAX_IMAGES

log = logging.getLogger("edgecl.serve")


_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    """One lock per bundle directory in this process. The bundle's own lock (``storage.locked``) serialises
    processes but is re-entrant for every thread of a process, so threads are serialised here."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(path.resolve(), threading.Lock())


class ServedBundle:
    """Thread-safe predict / teach / remove / history / rollback on one bundle directory."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        self.policy = signing.current()  # the keys in force where the server was made; requests run under them
        self.bundle = Bundle.load(path, device=device, threads=threads)
        self.path = self.bundle.path
        self.thumbs = Thumbs(self.path)
        self._state_lock = threading.Lock()  # the Bundle's state swap vs. readers of it
        self._write_lock = _write_lock(self.path)  # one update at a time from this process

    def current(self):
        """``(classes, head, seq)`` of the bundle on disk now."""
        with self._state_lock:
            self.bundle.refresh()
            return self.bundle.classes, self.bundle.head, self.bundle.seq

    def predict(self, images: list[np.ndarray], top_k: int, threshold: float | None) -> dict:
        """Top-k and unknown score of each image under the bundle's current state (scores and names from one
        state); with a ``threshold`` a rejected image's label is null."""
        classes, _, seq = self.current()
        if not classes:
            return {"seq": seq, "unknown_threshold": threshold, "predictions": [
                {"label": None, "unknown": False, "unknown_score": None, "top_k": []} for _ in images]}
        pred = self.bundle.predict(images, top_k=top_k, unknown=threshold)
        return {"seq": pred.seq, "unknown_threshold": threshold, "predictions": [
            {"label": label, "unknown": label is None, "unknown_score": float(u),
             "top_k": [{"class": c, "score": float(s)} for c, s in top]}
            for label, u, top in zip(pred.labels, pred.unknown_scores, pred.top_k)]}

    def classes(self) -> list[dict]:
        """Each class: name, example count, thumbnails, and whether it was taught on the device."""
        classes, head, _ = self.current()
        counts = getattr(head, "counts", None)
        updates = store.history(self.path)["updates"]
        galleries = self.thumbs.galleries(updates)
        base = set(self.bundle.manifest.get("base", {}).get("classes", []))
        taught = set()
        for u in updates:
            (taught.add if u["op"] == "add" else taught.discard)(u["class"])
        return [{"name": c, "examples": int(counts[i]) if counts is not None else None,
                 "thumbnails": galleries.get(c, []), "taught_on_device": c in taught or c not in base}
                for i, c in enumerate(classes)]

    def teach(self, name, create: bool, images=None, features=None, thumbnails=()) -> dict:
        """Add examples (images, or feature rows the browser computed) to a new (``create``) or existing class."""
        name = inputs.class_name(name)
        if features is None:
            features = self.bundle.embed(images)
            thumbnails = images
        features = _rows(features)
        with self._write_lock:
            classes, _, _ = self.current()
            if create and name in classes:
                raise conflict(f"a class named {name!r} exists already: add examples to it instead "
                               f"(POST /api/classes/{name}/examples), or choose another name")
            if not create and name not in classes:
                raise not_found(f"no class named {name!r}; create it with POST /api/classes")
            state, created = store.add_examples(self.path, name, features)
            rec = [u for u in store.history(self.path)["updates"] if u["seq"] == state.seq]
            if rec and thumbnails is not None and len(thumbnails):
                try:  # the update is committed already: a gallery that cannot be written only logs
                    self.thumbs.add(rec[0]["id"], name, list(thumbnails))
                except OSError as exc:
                    log.warning("cannot store thumbnails in %s: %s", self.thumbs.dir, exc)
            self.current()
        counts = getattr(state.head, "counts", None)
        idx = state.classes.index(name)
        return {"name": name, "created": created, "examples_added": int(features.shape[0]),
                "examples": int(counts[idx]) if counts is not None else None,
                "num_classes": len(state.classes), "seq": state.seq}

    def remove(self, name) -> dict:
        name = inputs.class_name(name)
        with self._write_lock:
            classes, _, _ = self.current()
            if name not in classes:
                raise not_found(f"no class named {name!r}; the bundle has {len(classes)} classes")
            state = store.remove_class(self.path, name)
            self.current()
        return {"removed": name, "num_classes": len(state.classes), "seq": state.seq}

    def history(self) -> dict:
        return store.history(self.path)

    def rollback(self, to) -> dict:
        if not isinstance(to, int) or isinstance(to, bool):
            raise bad_request(f"'to' must be an integer update number, got {to!r}")
        with self._write_lock:
            state = store.rollback(self.path, to)  # refuses numbers outside base..current (400)
            self.current()
        return {"seq": state.seq, "num_classes": len(state.classes)}

    def public_keys(self) -> list[str]:
        """The Ed25519 public keys this server trusts, base64 of their raw 32 bytes (for the in-browser mode)."""
        return [base64.b64encode(signing.raw_public(k)).decode("ascii") for k in self.policy.trusted]

    def bundle_files(self) -> list[str]:
        """The files that make up the bundle now: the manifest, the files it checksums, the journal, the model card."""
        m = json.loads((self.path / MANIFEST_NAME).read_bytes())
        return [MANIFEST_NAME, *m.get("files", {}), m.get("journal", {}).get("file"), CARD_NAME]

    def zip_bytes(self) -> bytes:
        """The bundle as a zip, read under the bundle's update lock (a consistent copy)."""
        buf = io.BytesIO()
        with self._write_lock, storage.locked(self.path), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in dict.fromkeys(self.bundle_files()):
                if name and (self.path / name).is_file():
                    z.write(self.path / name, f"{self.path.name}/{name}")
        return buf.getvalue()


def _rows(features) -> np.ndarray:
    """Feature rows as float32 ``(k, F)``; shape and finiteness are checked by ``store.add_examples``."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # numbers beyond float32 become inf: refused as non-finite
            arr = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError):
        raise bad_request("'features' must be a list of equal-length lists of numbers") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise bad_request(f"'features' must be a non-empty list of rows, got shape {arr.shape}")
    if arr.shape[0] > MAX_IMAGES:
        raise too_large(f"{arr.shape[0]} feature rows in one request; the limit is {MAX_IMAGES}")
    return arr
