"""Where edgecl keeps what it makes once and reuses: ``$EDGECL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgecl``
or ``~/.cache/edgecl`` (pre-trained embedded backbones, generated data sets, embeddings), and how to see
and clear it by section (``edgecl cache``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("EDGECL_CACHE_DIR"):
        return Path(os.environ["EDGECL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecl"


# What each section of the cache holds and what clearing it costs; other directories show as they are.
SECTIONS = {
    "backbones": "pre-trained embedded backbones (pre-trained again on next use, minutes each)",
    "glyphs": "rendered glyphs data sets (rendered again on next use)",
    "emoji": "rendered emoji data sets (rendered again on next use)",
    "embeddings": "image embeddings per frozen module state (computed again on next use)",
}
STALE_SECONDS = 3600  # a hidden temporary (a writer's work in progress) older than this was left by a crash


@dataclass(frozen=True)
class CacheSection:
    """One directory of the cache: its entries (hidden temporaries and locks aside) and bytes (all)."""

    name: str
    path: Path
    entries: int
    bytes: int
    holds: str


def cache_usage(root: Path | None = None) -> list[CacheSection]:
    """The sections of the cache at ``root`` (default ``cache_dir()``), known ones first."""
    root = cache_dir() if root is None else Path(root)
    return [_tally(root / n, _children(root / n)) for n in _section_names(root)]


def clear_cache(names: list[str] | None = None, root: Path | None = None, dry_run: bool = False) -> list[CacheSection]:
    """Removes the entries of sections ``names`` (all if None; and temporaries left by crashed writers); returns
    what was (with ``dry_run``, would be) removed. Every name is checked before anything is removed; each entry
    is renamed away before it is deleted, so a reader sees a whole entry or none (open memory maps stay valid)."""
    root = cache_dir() if root is None else Path(root)
    known = _section_names(root)
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ValueError(f"no cache section {', '.join(unknown)} in {root} (sections: {', '.join(known) or 'none'})")
    removed = []
    for name in dict.fromkeys(known if names is None else names):
        paths = _removable(root / name)
        removed.append(_tally(root / name, paths))
        if not dry_run:
            for p in paths:
                _remove(p)
    return removed


def _section_names(root: Path) -> list[str]:
    found = sorted(p.name for p in _children(root) if p.is_dir() and not p.name.startswith("."))
    return [n for n in SECTIONS if n in found] + [n for n in found if n not in SECTIONS]


def _tally(section: Path, paths: list[Path]) -> CacheSection:
    """``paths`` of ``section`` as a ``CacheSection``: entries (hidden names aside) and bytes (all)."""
    return CacheSection(section.name, section, sum(not p.name.startswith(".") for p in paths),
                        sum(_size(p) for p in paths), SECTIONS.get(section.name, "-"))


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []


def _size(path: Path) -> int:
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
        return sum(_size(p) for p in _children(path))
    except FileNotFoundError:
        return 0


def _removable(section: Path) -> list[Path]:
    now = time.time()
    out = []
    for p in _children(section):
        try:
            if not p.name.startswith(".") or now - p.lstat().st_mtime > STALE_SECONDS:
                out.append(p)
        except FileNotFoundError:
            continue
    return sorted(out)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    from edgecl_runtime.storage import temp_name

    trash = temp_name(path)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
