"""Where edgecl keeps what it makes once and reuses: ``$EDGECL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgecl``
or ``~/.cache/edgecl`` (pre-trained embedded backbones, generated data sets, embeddings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("EDGECL_CACHE_DIR"):
        return Path(os.environ["EDGECL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecl"
