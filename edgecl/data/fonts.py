"""Font faces available offline and which characters each one really draws.

Two sources, both found on disk, never downloaded:

* ``matplotlib_faces()`` - the TrueType fonts inside matplotlib's wheel: DejaVu Sans, Sans Mono
  and Serif (4 styles each), STIX General (4 styles) and the Computer Modern ``cm*`` fonts.
  Left out: LastResort (a box per Unicode block), STIXSize*/STIXNonUni* (size variants and
  unencoded glyphs) and the DejaVu *Display* fonts (a handful of glyphs).
* ``noto_cjk_faces()`` - Debian's ``fonts-noto-cjk`` collections (``.ttc``, several faces each:
  Sans/Serif x Regular/Bold x the JP/KR/SC/TC/HK regional glyph variants), if installed.

A character is *in* a face when the face's cmap maps it (Pillow silently draws a .notdef box
for a missing glyph, so presence is never guessed from a rendering). The Computer Modern fonts
carry TeX encodings behind a Unicode-looking cmap (code point ``"`` maps to the glyph
``quotedblright``): for a face whose glyph names mostly disagree with its cmap, a code point
counts only when the Adobe Glyph List name of its glyph is that very character. Whitespace,
control, format, private-use, unassigned and combining code points never count: they draw
nothing or nothing on their own.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeclError

NOTO_CJK_DIRS = ("/usr/share/fonts/opentype/noto", "/usr/share/fonts/noto-cjk", "/usr/share/fonts/google-noto-cjk")
NOTO_CJK_FILES = ("NotoSansCJK-Regular.ttc", "NotoSansCJK-Bold.ttc", "NotoSerifCJK-Regular.ttc", "NotoSerifCJK-Bold.ttc")
CJK_IDEOGRAPHS = range(0x4E00, 0xA000)  # the CJK Unified Ideographs block
_EXCLUDED = ("LastResort", "STIXSiz", "STIXNonUni")
_SKIP_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Mc"}


class FontError(EdgeclError, RuntimeError):
    """Fonts that are missing or cannot be read."""


@dataclass(frozen=True)
class Face:
    """One font face: a file (and a face index inside a ``.ttc`` collection) and its characters."""

    name: str  # e.g. "DejaVuSans-Bold", "NotoSansCJK-Regular-SC"
    path: str
    index: int
    family: str  # e.g. "DejaVuSans", "STIXGeneral", "cm", "NotoSansCJK"
    italic: bool
    codepoints: frozenset[int]

    def __contains__(self, cp: int) -> bool:
        return cp in self.codepoints

    def __repr__(self) -> str:
        return f"Face({self.name!r}, {len(self.codepoints)} code points)"


def drawable(cp: int) -> bool:
    """Whether a code point draws a glyph of its own (not blank, control, combining, private)."""
    return unicodedata.category(chr(cp)) not in _SKIP_CATEGORIES


def _cmap_codepoints(tt, keep=None, check_names: bool = True) -> frozenset[int]:
    from fontTools.agl import toUnicode

    cmap = tt.getBestCmap() or {}
    if keep is not None:
        cmap = {cp: g for cp, g in cmap.items() if cp in keep}
    if not check_names:  # CID-keyed CJK fonts name glyphs "cid01234"
        return frozenset(cp for cp in cmap if drawable(cp))
    agrees = {cp for cp, glyph in cmap.items() if toUnicode(glyph) == chr(cp)}
    # Unicode fonts (DejaVu: 99.5 %, STIX: 100 %) vs TeX-encoded cm* fonts (cmr10: 64 %, cmex10: 1 %)
    trusted = set(cmap) if len(agrees) >= 0.9 * max(1, len(cmap)) else agrees
    return frozenset(cp for cp in trusted if drawable(cp))


def _family(stem: str) -> str:
    if stem.startswith("cm"):
        return "cm"
    return stem.split("-")[0]


@functools.lru_cache(maxsize=None)
def matplotlib_faces() -> tuple[Face, ...]:
    """The benchmark fonts that ship inside matplotlib's wheel, sorted by name."""
    import matplotlib
    from fontTools.ttLib import TTFont

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    files = sorted(p for p in root.glob("*.ttf") if not p.name.startswith(_EXCLUDED) and "Display" not in p.name)
    if not files:
        raise FontError(f"no fonts found in matplotlib's data directory {root}")
    faces = []
    for p in files:
        tt = TTFont(str(p), lazy=True)
        italic = any(s in p.stem for s in ("Italic", "Oblique", "Ita")) or p.stem in ("cmti10", "cmmi10")
        cps = _cmap_codepoints(tt)
        tt.close()
        if cps:  # cmex10 holds only big delimiters under ASCII codes: nothing counts
            faces.append(Face(p.stem, str(p), 0, _family(p.stem), italic, cps))
    return tuple(faces)


def find_noto_cjk(dirs=NOTO_CJK_DIRS) -> list[Path]:
    """The ``fonts-noto-cjk`` collection files that are installed (maybe none)."""
    found = []
    for name in NOTO_CJK_FILES:
        for d in dirs:
            if (Path(d) / name).is_file():
                found.append(Path(d) / name)
                break
    return found


@functools.lru_cache(maxsize=None)
def noto_cjk_faces(dirs: tuple[str, ...] = NOTO_CJK_DIRS) -> tuple[Face, ...]:
    """The proportional (non-Mono) faces of the installed Noto CJK collections, CJK ideographs only.

    Returns ``()`` when ``fonts-noto-cjk`` is not installed.
    """
    from fontTools.ttLib import TTCollection

    faces = []
    for path in find_noto_cjk(dirs):
        coll = TTCollection(str(path), lazy=True)
        for i, tt in enumerate(coll.fonts):
            full = tt["name"].getDebugName(4) or f"{path.stem}#{i}"
            if "Mono" in full:  # same ideographs as the proportional face
                continue
            cps = _cmap_codepoints(tt, keep=set(CJK_IDEOGRAPHS), check_names=False)
            region = next((w for w in full.split() if w in ("JP", "KR", "SC", "TC", "HK")), str(i))
            faces.append(Face(f"{path.stem}-{region}", str(path), i, path.stem.split("-")[0], False, cps))
        coll.close()
    return tuple(faces)


@functools.lru_cache(maxsize=64)
def pil_font(path: str, index: int, size: int):
    """A cached Pillow FreeType font of ``size`` pixels per em."""
    from PIL import ImageFont

    return ImageFont.truetype(path, size, index=index)
