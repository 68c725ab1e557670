"""Rendered-character data: the ``glyphs`` benchmark and the CJK pre-training corpus.

A class is a Unicode code point, a domain is a font face (``fonts.py``). An image is the glyph
rendered by Pillow as a grey mask at twice the output size, centred on its ink, then augmented
(``augment.py``: stroke weight, affine + elastic warp, blur, colours, texture, noise).

**The ``glyphs`` benchmark** (``load_dataset("glyphs:N[:SPLIT][:SIZE]")``) draws N classes
(seeded) from the code points that at least 8 of matplotlib's fonts draw (``benchmark_pool``,
2,683 after removing look-alikes) and has two splits:

* ``within`` - train and test images come from the same fonts (every font of the class);
* ``cross`` - train on the upright fonts, test on the held-out italic / oblique fonts (DejaVu
  Oblique/Italic, STIX Italic, cmti10, cmmi10): a style shift between training and test, the
  analogue of ImageNet-R in the survey. Every class has >= 2 training fonts and >= 1 test font.

Both splits of a size use the same classes, so within vs. cross isolates the domain shift.
Images are RGB, 64 px by default (``glyphs:200:cross:96`` for 96 px). Data sets are generated
once, in parallel, and cached as memory-mapped ``.npy`` arrays under the cache dir
(``$EDGECL_CACHE_DIR/glyphs/<name>-<hash>``), keyed by a hash of the full configuration and
``GENERATOR_VERSION``; a cache directory is written whole under a temporary name and renamed,
so a crash or a concurrent generator never leaves a partial one, and a damaged one is rebuilt.

**The pre-training corpus** (``pretrain_corpus``, ``pretrain_batches``) renders CJK ideographs
from Debian's ``fonts-noto-cjk`` (20 faces: Sans/Serif x Regular/Bold x JP/KR/SC/TC/HK), which
are disjoint from every benchmark class. Without those fonts (``source="auto"``) it warns and
falls back to matplotlib's fonts, using only code points drawn by 2 to 7 of them: never a
benchmark class (those need >= 8 fonts) and never a look-alike of one.

Everything is deterministic from the seed: the same configuration gives the same bytes, with
any number of worker processes.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np

from . import generated
from .augment import AugmentConfig, augment
from .fonts import Face, matplotlib_faces, noto_cjk_faces, pil_font
from .errors import DataError

GENERATOR_VERSION = 1
MIN_FONTS = 8  # a benchmark class is drawn by at least this many fonts
FALLBACK_FONTS = (2, MIN_FONTS - 1)  # pre-training fallback classes: drawn by 2..7 fonts
EM = 0.6  # font size (pixels per em) as a fraction of the mask canvas
MAX_INK = 0.92  # a glyph whose ink is larger than this fraction of the canvas is scaled down
OVERSAMPLE = 2  # masks are rendered at this multiple of the output size
SPLITS = ("within", "cross")
DUPLICATE_SIMILARITY = 0.99  # classes whose renderings in a shared font are this similar are merged
# CJK ideographs fill their em square and have many strokes: larger, less blurred, clearer at 32 px
PRETRAIN_AUGMENT = AugmentConfig(
    scale=(1.0, 1.25), blur=(0.0, 0.6), texture=(0.0, 0.2), min_contrast=0.4, weight_prob=0.3
)


# ----------------------------------------------------------------------------------- rendering


def render_mask(path: str, index: int, cp: int, canvas: int) -> np.ndarray:
    """Glyph ``cp`` of a face as a uint8 ``(canvas, canvas)`` ink mask, centred on its ink.

    The font size is ``EM * canvas`` pixels per em, so glyphs keep their relative sizes
    (``o`` is smaller than ``O``) unless the ink would not fit, then it is scaled down.
    """
    size = max(4, round(EM * canvas))
    for _ in range(2):
        font = pil_font(path, index, size)
        core, _ = font.getmask2(chr(cp), mode="L")
        w, h = core.size
        ink = np.frombuffer(bytes(core), np.uint8).reshape(h, w) if w and h else np.zeros((0, 0), np.uint8)
        rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
        if not len(rows):
            return np.zeros((canvas, canvas), np.uint8)
        ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        limit = MAX_INK * canvas
        if max(ink.shape) <= limit:
            break
        size = max(4, int(size * limit / max(ink.shape)))
    ink = ink[:canvas, :canvas]
    out = np.zeros((canvas, canvas), np.uint8)
    y, x = (canvas - ink.shape[0]) // 2, (canvas - ink.shape[1]) // 2
    out[y : y + ink.shape[0], x : x + ink.shape[1]] = ink
    return out


def render_images(
    items: Sequence[tuple[str, int, int]], size: int, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """Augmented RGB images ``(N, size, size, 3)`` uint8 of ``(font path, face index, code point)`` items."""
    canvas = OVERSAMPLE * size
    masks = np.stack([render_mask(p, i, cp, canvas) for p, i, cp in items]) if len(items) else np.zeros((0, canvas, canvas), np.uint8)
    return augment(masks, size, rng, cfg)


# ------------------------------------------------------------------------------- class pools


def _signatures(faces: Sequence[Face], cps: Sequence[int], canvas: int = 32) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per face: (code points it draws among ``cps``, their flattened unit-norm renderings)."""
    out = {}
    for f, face in enumerate(faces):
        mine = np.array([cp for cp in cps if cp in face], dtype=np.int64)
        if not len(mine):
            continue
        sig = np.stack([render_mask(face.path, face.index, int(cp), canvas) for cp in mine]).reshape(len(mine), -1)
        out[f] = (mine, sig.astype(np.float32))
    return out


@functools.lru_cache(maxsize=None)
def _matplotlib_table() -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """``_build_table()``, cached on disk (it takes ~3 s of CPU) keyed by the fonts and settings."""
    faces = matplotlib_faces()
    ident = [GENERATOR_VERSION, DUPLICATE_SIMILARITY, FALLBACK_FONTS, EM, MAX_INK]
    ident += [[f.name, os.path.getsize(f.path), len(f.codepoints)] for f in faces]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    path = _cache_root() / f"font-table-{key}.json"
    try:
        data = json.loads(path.read_text())
        return {int(cp): tuple(fs) for cp, fs in data["table"].items()}, tuple(data["kept"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table, kept = _build_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump({"table": {str(cp): fs for cp, fs in table.items()}, "kept": kept}, fh)
    os.replace(tmp, path)
    return table, kept


def _build_table() -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """``({code point: faces that draw it}, kept code points)`` over code points in >= 2 fonts.

    A (face, code point) whose rendering is empty is dropped. Two code points whose renderings
    in some font they share are near-identical (``DUPLICATE_SIMILARITY``; Latin A, Greek Alpha
    and Cyrillic A; hyphen and U+2010) are look-alikes: of each group only the code point drawn
    by the most fonts (then the lowest) is kept, so no class has a twin anywhere.
    """
    faces = matplotlib_faces()
    counts: dict[int, int] = {}
    for face in faces:
        for cp in face.codepoints:
            counts[cp] = counts.get(cp, 0) + 1
    cps = sorted(cp for cp, n in counts.items() if n >= FALLBACK_FONTS[0])
    sigs = _signatures(faces, cps)
    where: dict[int, list[int]] = {}
    twins: dict[int, set[int]] = {}
    for f, (mine, sig) in sigs.items():
        norm = np.sqrt((sig * sig).sum(axis=1))
        drawn = norm > 255 * 2  # at least ~4 full pixels of ink at 32 px
        for cp in mine[drawn]:
            where.setdefault(int(cp), []).append(f)
        mine, sig, norm = mine[drawn], sig[drawn], norm[drawn]
        # similarity 2ab / (|a|^2 + |b|^2) is 1 only for equal renderings and <= 2r / (1 + r^2)
        # for a norm ratio r: only pairs with r < 1.16 can pass 0.99, a window in norm order
        order = np.argsort(norm)
        mine, sig, norm = mine[order], sig[order], norm[order]
        sq = norm * norm
        for start in range(0, len(mine), 512):
            stop = min(start + 512, len(mine))
            hi = int(np.searchsorted(norm, norm[stop - 1] * 1.16, side="right"))
            sim = 2 * (sig[start:stop] @ sig[start:hi].T) / (sq[start:stop, None] + sq[None, start:hi])
            i, j = np.nonzero(sim > DUPLICATE_SIMILARITY)
            for a, b in zip(mine[start + i], mine[start + j]):
                if a != b:
                    twins.setdefault(int(a), set()).add(int(b))
                    twins.setdefault(int(b), set()).add(int(a))
    table = {cp: tuple(fs) for cp, fs in where.items() if len(fs) >= FALLBACK_FONTS[0]}
    kept: set[int] = set()
    for cp in sorted(table, key=lambda c: (-len(table[c]), c)):
        if not twins.get(cp, set()) & kept:
            kept.add(cp)
    return table, tuple(sorted(kept))


def _italic(face_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    faces = matplotlib_faces()
    return [f for f in face_ids if not faces[f].italic], [f for f in face_ids if faces[f].italic]


@functools.lru_cache(maxsize=None)
def benchmark_pool() -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The benchmark's candidate classes: ``(code point, face ids)``, drawn by >= 8 fonts,
    with >= 2 upright and >= 1 italic font (so both splits exist), no look-alikes."""
    table, kept = _matplotlib_table()
    pool = []
    for cp in kept:
        fs = table[cp]
        upright, italic = _italic(fs)
        if len(fs) >= MIN_FONTS and len(upright) >= 2 and italic:
            pool.append((cp, fs))
    return tuple(pool)


@functools.lru_cache(maxsize=None)
def fallback_pool() -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Pre-training classes from matplotlib's fonts when Noto CJK is absent: code points drawn by
    2..7 fonts (never a benchmark class), no look-alike of any benchmark class."""
    table, kept = _matplotlib_table()
    benchmark = {cp for cp, _ in benchmark_pool()}
    return tuple((cp, table[cp]) for cp in kept if cp not in benchmark and len(table[cp]) <= FALLBACK_FONTS[1])


def class_name(cp: int) -> str:
    return f"U+{cp:04X}"


# ------------------------------------------------------------------------- generation, cache


def generate(
    items: Sequence[tuple[str, int, int]],
    size: int,
    seed_words: Sequence[int],
    cfg: AugmentConfig,
    out: str | Path | None = None,
    workers: int = 1,
    progress=None,
) -> np.ndarray | None:
    """``render_images`` of ``items`` in chunks, chunk ``k`` from the stream ``(*seed_words, k)``
    (``generated.generate``): the bytes do not depend on ``workers``; with ``out`` the images are
    written into that ``.npy`` and ``None`` is returned. ``progress(done, total)`` after each chunk."""
    return generated.generate(render_images, items, size, seed_words, cfg, out, workers, progress)


_pool = generated.pool
default_workers = generated.default_workers


def _cache_root() -> Path:
    return generated.cache_root("glyphs")


def materialise(name: str, config: dict, build, log=None) -> dict:
    """``generated.materialise`` under ``<cache>/glyphs`` with this module's ``GENERATOR_VERSION``."""
    return generated.materialise(_cache_root(), name, config, build, GENERATOR_VERSION, log)


def _write_split(tmp: Path, split: str, items, labels, size, seed_words, cfg, workers, label: str = "glyphs"):
    out = generated.alloc_split(tmp, split, labels, size)
    generate(items, size, seed_words, cfg, out, workers, generated.log_progress(f"{label} {split}"))


# --------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class GlyphConfig(generated.GeneratedConfig):
    """A ``glyphs`` benchmark data set: everything its pixels depend on."""

    kind: ClassVar[str] = "glyphs"
    splits: ClassVar[tuple[str, ...]] = SPLITS

    num_classes: int = 200
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def pool_size(self) -> tuple[int, str]:
        return len(benchmark_pool()), f"code points in >= {MIN_FONTS} fonts"

def plan(cfg: GlyphConfig) -> tuple[list[int], dict[str, tuple[list[tuple[str, int, int]], np.ndarray]]]:
    """Classes (code points, label order) and per split the (font, code point) items and labels."""
    faces = matplotlib_faces()
    pool = benchmark_pool()
    rng = np.random.default_rng([cfg.seed, 0x676C79])
    chosen = sorted(rng.choice(len(pool), cfg.num_classes, replace=False).tolist())
    classes = [pool[i][0] for i in chosen]
    splits = {}
    for split, per_class in (("train", cfg.train_per_class), ("test", cfg.test_per_class)):
        items, labels = [], []
        for label, i in enumerate(chosen):
            cp, face_ids = pool[i]
            if cfg.split == "cross":
                face_ids = _italic(face_ids)[split == "test"]
            order = rng.permutation(face_ids)
            for j in range(per_class):  # cycle through the class's fonts in a random order
                f = faces[int(order[j % len(order)])]
                items.append((f.path, f.index, cp))
                labels.append(label)
        splits[split] = (items, np.asarray(labels, dtype=np.int64))
    return classes, splits


def make_glyphs(cfg: GlyphConfig | None = None, workers: int | None = None, cache: bool = True, log=None):
    """``(train, test)`` ``ArrayDataset``s of a ``glyphs`` configuration (cached, memory-mapped)."""
    from .dataset import ArrayDataset

    cfg = cfg or GlyphConfig()
    classes, splits = plan(cfg)
    names = [class_name(cp) for cp in classes]
    workers = default_workers() if workers is None else workers
    faces = {f.path: f.name for f in matplotlib_faces()}

    def build(tmp: Path):
        for code, split in enumerate(("train", "test")):
            items, labels = splits[split]
            _write_split(tmp, split, items, labels, cfg.size, [cfg.seed, code, GENERATOR_VERSION], cfg.augment, workers,
                         f"glyphs:{cfg.num_classes}:{cfg.split}:{cfg.size}")
        fonts = {s: [faces[p] for p, _, _ in splits[s][0]] for s in ("train", "test")}
        np.save(tmp / "font_train.npy", np.array(fonts["train"]))
        np.save(tmp / "font_test.npy", np.array(fonts["test"]))
        return {"class_names": names}

    config = {"kind": "glyphs", **asdict(cfg), "fonts": sorted(faces.values())}
    if not cache:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            arrays = {p.stem: np.load(p) for p in Path(tmp).glob("*.npy")}
    else:
        arrays = materialise(f"glyphs{cfg.num_classes}-{cfg.split}-{cfg.size}px", config, build, log)
    return tuple(
        ArrayDataset(arrays[f"x_{s}"], np.asarray(arrays[f"y_{s}"]), names, np.asarray(arrays[f"font_{s}"])) for s in ("train", "test")
    )


def parse_spec(spec: str, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> GlyphConfig:
    """``glyphs:N[:within|cross][:SIZE]`` -> ``GlyphConfig`` (see the module doc)."""
    usage = "use glyphs:N[:within|cross][:SIZE], e.g. glyphs:200, glyphs:500:cross, glyphs:200:cross:96"
    n, split, size = generated.parse_spec(spec, "glyphs", SPLITS, usage)
    return GlyphConfig(n, split or "within", train_per_class, test_per_class, size or 64, seed)


# ------------------------------------------------------------------------ pre-training corpus


@functools.lru_cache(maxsize=None)
def _cjk_pool() -> tuple[tuple[Face, ...], tuple[int, ...]]:
    faces = noto_cjk_faces()
    if not faces:
        return (), ()
    common = set.intersection(*(set(f.codepoints) for f in faces))
    return faces, tuple(sorted(common))


def pretrain_source(source: str = "auto") -> str:
    """Resolve ``source`` ("auto", "cjk", "matplotlib") to the one that will be used."""
    if source not in ("auto", "cjk", "matplotlib"):
        raise DataError(f"pre-training source must be auto, cjk or matplotlib, got {source!r}")
    if source == "matplotlib":
        return source
    if _cjk_pool()[1]:
        return "cjk"
    hint = "install Debian's fonts-noto-cjk (apt-get install fonts-noto-cjk)"
    if source == "cjk":
        raise DataError(f"the CJK pre-training corpus needs Noto CJK fonts, none found: {hint}")
    warnings.warn(
        f"Noto CJK fonts not found ({hint}); pre-training falls back to matplotlib's fonts on "
        f"{len(fallback_pool())} code points disjoint from the glyphs benchmark", stacklevel=3,
    )
    return "matplotlib"


def pretrain_classes(num_classes: int, source: str = "auto") -> tuple[list[int], list[tuple[tuple[str, int], ...]], str]:
    """``(code points, per class the (path, index) of the faces that draw it, source used)``.

    The classes are a fixed permutation of the source's pool (independent of any seed), so
    the classes of a smaller corpus are the first classes of a larger one.
    """
    used = pretrain_source(source)
    if used == "cjk":
        faces, cps = _cjk_pool()
        table = [(cp, tuple((f.path, f.index) for f in faces if cp in f)) for cp in cps]
    else:
        mfaces = matplotlib_faces()
        table = [(cp, tuple((mfaces[f].path, mfaces[f].index) for f in fs)) for cp, fs in fallback_pool()]
    if not 1 <= num_classes <= len(table):
        raise DataError(f"the {used} pre-training corpus has 1..{len(table)} classes, asked for {num_classes}")
    order = np.random.default_rng(0x707274).permutation(len(table))[:num_classes]
    return [table[i][0] for i in order], [table[i][1] for i in order], used


def _pretrain_items(faces_per_class, labels: np.ndarray, cps: Sequence[int], rng: np.random.Generator):
    pick = rng.random(len(labels))
    return [
        (*faces_per_class[y][int(u * len(faces_per_class[y]))], cps[y]) for y, u in zip(labels.tolist(), pick)
    ]


def pretrain_corpus(
    num_classes: int,
    per_class: int,
    size: int = 32,
    seed: int = 0,
    source: str = "auto",
    augment: AugmentConfig = PRETRAIN_AUGMENT,
    workers: int | None = None,
    cache: bool = True,
):
    """A fixed pre-training set: ``per_class`` augmented renderings of each of ``num_classes``
    code points (CJK ideographs from Noto CJK, see ``pretrain_source``), each from a random face.

    Returns an ``ArrayDataset`` (labels 0..num_classes-1, names ``U+4E00``-style), cached and
    memory-mapped like the benchmark.
    """
    from .dataset import ArrayDataset

    if per_class < 1 or not 8 <= size <= 512:
        raise DataError(f"pretrain_corpus needs per_class >= 1 and size 8..512, got {per_class}, {size}")
    cps, faces_per_class, used = pretrain_classes(num_classes, source)
    names = [class_name(cp) for cp in cps]
    workers = default_workers() if workers is None else workers
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)

    def build(tmp: Path):
        items = _pretrain_items(faces_per_class, labels, cps, np.random.default_rng([seed, 0x666F6E74]))
        _write_split(tmp, "train", items, labels, size, [seed, 2, GENERATOR_VERSION], augment, workers)
        return {"class_names": names}

    config = {"kind": "pretrain", "source": used, "num_classes": num_classes, "per_class": per_class,
              "size": size, "seed": seed, "augment": augment.as_dict()}
    if not cache:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            return ArrayDataset(np.load(Path(tmp) / "x_train.npy"), labels, names)
    arrays = materialise(f"pretrain-{used}{num_classes}x{per_class}-{size}px", config, build)
    return ArrayDataset(arrays["x_train"], np.asarray(arrays["y_train"]), names)


_STREAM: dict = {}  # the class table of a pretrain_batches worker process


def _stream_init(table) -> None:
    _STREAM["table"] = table


def _stream_batch(k: int, table=None) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``k`` of a stream: everything random comes from ``(seed, k)``."""
    cps, faces_per_class, batch_size, size, seed, augment = table or _STREAM["table"]
    rng = np.random.default_rng([seed, 3, GENERATOR_VERSION, k])
    labels = rng.integers(0, len(cps), batch_size).astype(np.int64)
    items = _pretrain_items(faces_per_class, labels, cps, rng)
    return render_images(items, size, rng, augment), labels


def pretrain_batches(
    num_classes: int,
    batch_size: int = 256,
    size: int = 32,
    seed: int = 0,
    source: str = "auto",
    augment: AugmentConfig = PRETRAIN_AUGMENT,
    num_batches: int | None = None,
    workers: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An endless (or ``num_batches`` long) stream of fresh ``(images uint8 (B, size, size, 3),
    labels int64 (B,))`` batches: uniformly random classes of ``pretrain_classes``, random faces,
    new augmentations every time. Batch ``k`` depends only on ``(seed, k)`` and the arguments,
    so the stream is the same with any ``workers``: 0 renders in the caller's process, N > 0 in
    N background processes that keep up to 2N batches ready (for training, overlap rendering
    with the optimiser step)."""
    if batch_size < 1 or not 8 <= size <= 512 or workers < 0:
        raise DataError(f"pretrain_batches needs batch_size >= 1, size 8..512, workers >= 0; got {batch_size}, {size}, {workers}")
    cps, faces_per_class, _ = pretrain_classes(num_classes, source)
    table = (cps, faces_per_class, batch_size, size, seed, augment)
    ks = itertools.count() if num_batches is None else iter(range(num_batches))
    if workers == 0:
        for k in ks:
            yield _stream_batch(k, table)
        return
    with _pool(workers, _stream_init, (table,)) as pool:
        pending = collections.deque(pool.apply_async(_stream_batch, (k,)) for k in itertools.islice(ks, 2 * workers))
        while pending:
            batch = pending.popleft().get()
            pending.extend(pool.apply_async(_stream_batch, (k,)) for k in itertools.islice(ks, 1))
            yield batch
