"""Machinery shared by the rendered data sets (``glyphs``, ``emoji``): spec parsing, chunked
parallel generation with per-chunk random streams, and the on-disk cache of memory-mapped arrays.

* ``parse_spec(spec, kind, splits, usage)`` reads ``KIND:N[:SPLIT][:SIZE]``.
* ``generate(render, items, size, seed_words, cfg, ...)`` calls ``render(items, size, rng, cfg)``
  on chunks of ``CHUNK`` items, chunk ``k`` with the generator ``(*seed_words, k)``, in worker
  processes, so the bytes never depend on the number of workers.
* ``materialise(root, name, config, build, version)`` loads or builds a cache entry
  ``root/<name>-<hash of config and version>/`` (``.npy`` arrays and ``meta.json``), written under a
  temporary name and renamed into place: readers see a whole entry or none.

Workers import only numpy and Pillow (and what ``render`` imports), never torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from .errors import DataError

logger = logging.getLogger("edgecl.data")

CHUNK = 256  # images per random stream / work unit


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class GeneratedConfig:
    """What a generated benchmark's pixels depend on, checked on creation; each kind subclasses it
    with its name, splits, class pool and augmentation."""

    kind: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()

    num_classes: int = 100
    split: str = "within"
    train_per_class: int = 30
    test_per_class: int = 10
    size: int = 64
    seed: int = 0

    def pool_size(self) -> tuple[int, str]:
        """How many classes the kind can draw, and what makes a code point one of them."""
        raise NotImplementedError

    def __post_init__(self):
        if self.split not in self.splits:
            raise DataError(f"{self.kind} split must be one of {', '.join(self.splits)}, got {self.split!r}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise DataError(f"{self.kind} needs train_per_class >= 1 and test_per_class >= 1")
        if not 8 <= self.size <= 512:
            raise DataError(f"{self.kind} image size must be 8..512 px, got {self.size}")
        pool, what = self.pool_size()
        if not 1 <= self.num_classes <= pool:
            raise DataError(f"{self.kind} has 1..{pool} classes ({what}), asked for {self.num_classes}")


# ------------------------------------------------------------------------------ spec parsing


def parse_spec(spec: str, kind: str, splits: Sequence[str], usage: str) -> tuple[int, str | None, int | None]:
    """``KIND:N[:SPLIT][:SIZE]`` -> ``(N, split or None, size or None)``; ``DataError`` naming ``usage``."""
    parts = spec.split(":")
    if parts[0] != kind or len(parts) < 2 or len(parts) > 4:
        raise DataError(f"bad spec {spec!r}: {usage}")
    try:
        n = int(parts[1])
    except ValueError:
        raise DataError(f"bad spec {spec!r}: the number of classes {parts[1]!r} is not an integer; {usage}") from None
    split = size = None
    for p in parts[2:]:
        if p in splits and split is None:
            split = p
        elif p.removesuffix("px").isdigit() and size is None:
            size = int(p.removesuffix("px"))
        else:
            raise DataError(f"bad spec {spec!r}: {p!r} is not a split ({', '.join(splits)}) or a size, or repeats one; {usage}")
    return n, split, size


# -------------------------------------------------------------------------------- generation


def _chunk_images(args) -> tuple[int, np.ndarray]:
    render, items, size, seed_words, cfg, out_path, start = args
    images = render(items, size, np.random.default_rng(seed_words), cfg)
    if out_path is None:
        return start, images
    out = np.load(out_path, mmap_mode="r+")
    out[start : start + len(images)] = images
    out.flush()
    del out
    return start, np.zeros((0,), np.uint8)


def generate(
    render: Callable,
    items: Sequence,
    size: int,
    seed_words: Sequence[int],
    cfg,
    out: str | Path | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | None:
    """Images ``render(chunk, size, rng, cfg)`` of ``items`` in chunks of ``CHUNK``, chunk ``k``
    from the stream ``(*seed_words, k)``.

    ``render`` must be a module-level function (workers receive it by name). The bytes depend
    only on the items, size, seeds and ``cfg``, not on ``workers``. With ``out`` (an existing
    ``.npy`` of shape ``(len(items), size, size, 3)``) the workers write into it and ``None`` is
    returned; otherwise the images are returned. ``progress(done, total)`` is called after each chunk.
    """
    jobs = [
        (render, list(items[s : s + CHUNK]), size, [*seed_words, k], cfg, None if out is None else str(out), s)
        for k, s in enumerate(range(0, len(items), CHUNK))
    ]
    result = None if out is not None else np.zeros((len(items), size, size, 3), np.uint8)
    done = 0

    def collect(start, images, n):
        nonlocal done
        if result is not None:
            result[start : start + len(images)] = images
        done += n
        if progress:
            progress(done, len(items))

    if workers > 1 and len(jobs) > 1:
        with pool(min(workers, len(jobs))) as p:
            for start, images in p.imap_unordered(_chunk_images, jobs):
                collect(start, images, min(CHUNK, len(items) - start))
    else:
        for job in jobs:
            start, images = _chunk_images(job)
            collect(start, images, len(job[1]))
    return result


def pool(workers: int, initializer=None, initargs=()):
    """A process pool. Fork where available: workers start at once and never re-run the
    caller's ``__main__`` (spawn would, in a script without a main guard); they use only
    numpy and Pillow, never torch, so forking a process that imported torch is safe."""
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(workers, initializer, initargs)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def log_progress(label: str) -> Callable[[int, int], None]:
    """A ``progress`` callback logging ``label: done/total images`` (logger ``edgecl.data``, INFO) at every
    tenth of the work; ``edgecl`` shows it on stderr unless ``-q``."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(1, total)
        if tenth != shown[0]:
            shown[0] = tenth
            logger.info(f"{label}: {done}/{total} images")

    return report


# ------------------------------------------------------------------------------------- cache


def cache_root(kind: str) -> Path:
    """``$EDGECL_CACHE_DIR/<kind>``, the cache directory of one kind of generated data."""
    from ..paths import cache_dir  # the one cache dir of edgecl ($EDGECL_CACHE_DIR)

    return cache_dir() / kind


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a complete cache entry (memory-mapped), or None if missing or damaged."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {}
        for name, (shape, dtype) in meta["arrays"].items():
            a = np.load(path / f"{name}.npy", mmap_mode="r")
            if list(a.shape) != shape or str(a.dtype) != dtype:
                return None
            arrays[name] = a
        return arrays | {"meta": meta}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def entry_path(root: Path, name: str, config: dict, version: int) -> Path:
    """Where the cache entry of ``config`` lives: ``root/<name>-<hash of config and version>``."""
    key = hashlib.sha256(json.dumps({"version": version, **config}, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{name}-{key}"


def materialise(root: Path, name: str, config: dict, build, version: int, log=None) -> dict:
    """Load the cache entry of ``config`` or build it: ``build(tmpdir)`` writes ``.npy`` files
    (and may write other files) and returns extra ``meta.json`` fields.

    The entry is ``entry_path(root, name, config, version)`` holding the arrays and
    ``meta.json`` (config, array shapes). It is written in a temporary directory next to it and
    renamed into place: readers see a whole entry or none. A damaged entry (missing or truncated
    array, shape mismatch) is replaced.
    """
    path = entry_path(root, name, config, version)
    cached = load_cached(path)
    if cached is not None:
        return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"generating {name} (first use; cached in {path})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _build_entry(tmp, config, build, version)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cached = load_cached(path)
    if cached is None:
        raise DataError(f"cache entry {path} could not be read back after writing it")
    (log or logger.debug)(f"cached {path}")
    return cached


def _build_entry(tmp: Path, config: dict, build, version: int) -> None:
    extra = build(tmp) or {}
    arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(tmp.glob("*.npy"))}
    meta = {"config": config, "version": version, **extra,
            "arrays": {k: [list(a.shape), str(a.dtype)] for k, a in arrays.items()}}
    del arrays
    for p in tmp.iterdir():
        with open(p, "rb+") as fh:
            os.fsync(fh.fileno())
    (tmp / "meta.json").write_text(json.dumps(meta))


def _move_into_place(tmp: Path, path: Path) -> None:
    if path.exists() and load_cached(path) is None:  # damaged: move aside, then replace
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, trash / "entry")  # open memory maps of it stay valid
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, path)
    except OSError:  # a concurrent maker finished first: keep its (equal) entry
        shutil.rmtree(tmp, ignore_errors=True)


def alloc_split(tmp: Path, split: str, labels, size: int) -> Path:
    """Create ``x_<split>.npy`` (zeros, ``(len(labels), size, size, 3)`` uint8) and write
    ``y_<split>.npy``; returns the path of the image array for ``generate(out=...)``."""
    path = tmp / f"x_{split}.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(labels), size, size, 3))
    del x
    np.save(tmp / f"y_{split}.npy", np.asarray(labels, dtype=np.int64))
    return path
