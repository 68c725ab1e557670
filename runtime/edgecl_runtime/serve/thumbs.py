"""Small thumbnails of taught examples, kept by the server in ``BUNDLE/.serve-thumbs/``.

They are outside the bundle's checksummed files (the bundle keeps feature rows,
not images). Each journal record the server writes gets its thumbnails under the
record's id, listed in ``index.json``; a class's gallery is rebuilt from the
bundle's history (the ``add`` records of the class since its last removal), so
rollback and removal show exactly the examples the current state holds.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np

DIR_NAME = ".serve-thumbs"
INDEX = "index.json"
SIZE = 96  # pixels, square
PER_CLASS = 24  # newest thumbnails shown per class
_ID = re.compile(r"^[0-9a-f]{1,64}$")


class Thumbs:
    """Thumbnail files and their index; callers serialise writes (the server's write lock)."""

    def __init__(self, bundle_dir: Path):
        self.dir = Path(bundle_dir) / DIR_NAME

    def _index(self) -> dict:
        try:
            return json.loads((self.dir / INDEX).read_text())
        except (OSError, ValueError):
            return {}

    def add(self, record_id: str, class_name: str, images: list[np.ndarray]) -> None:
        """Store thumbnails of ``images`` for journal record ``record_id``."""
        from PIL import Image, ImageOps

        if not _ID.match(record_id):
            return
        self.dir.mkdir(exist_ok=True)
        names = []
        for i, arr in enumerate(images[:PER_CLASS]):
            buf = io.BytesIO()
            ImageOps.fit(Image.fromarray(arr), (SIZE, SIZE)).save(buf, "JPEG", quality=85)
            name = f"{record_id}-{i}.jpg"
            (self.dir / name).write_bytes(buf.getvalue())
            names.append(name)
        index = self._index()
        index[record_id] = {"class": class_name, "files": names}
        tmp = self.dir / f"{INDEX}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.dir / INDEX)

    def galleries(self, updates: list[dict]) -> dict[str, list[str]]:
        """Thumbnail file names per class, from the bundle's journaled ``updates`` (``store.history``)."""
        index, out = self._index(), {}
        for u in updates:
            if u.get("op") == "remove_class":
                out.pop(u["class"], None)
            elif u.get("op") == "add" and u.get("id") in index:
                out.setdefault(u["class"], []).extend(index[u["id"]]["files"])
        return {k: v[-PER_CLASS:] for k, v in out.items()}

    def file(self, name: str) -> Path | None:
        """The path of thumbnail ``name`` if it is one of ours."""
        if not re.fullmatch(r"[0-9a-f]{1,64}-\d+\.jpg", name):
            return None
        p = self.dir / name
        return p if p.is_file() else None
