"""The glyphs benchmark, the pre-training corpus, glyph rendering and augmentation."""

import warnings

import numpy as np
import pytest

from edgecl.data import DataError, load_dataset
from edgecl.data import glyphs as G
from edgecl.data.augment import AugmentConfig, augment
from edgecl.data.fonts import matplotlib_faces

TINY = dict(num_classes=10, train_per_class=3, test_per_class=2, size=32)


def _face(name):
    return next(f for f in matplotlib_faces() if f.name == name)


def _items(n, size=16):
    pool = G.benchmark_pool()
    faces = matplotlib_faces()
    return [(faces[pool[i][1][0]].path, 0, pool[i][0]) for i in range(n)]


def test_render_is_deterministic_per_seed():
    items = _items(12)
    a = G.render_images(items, 32, np.random.default_rng(1))
    b = G.render_images(items, 32, np.random.default_rng(1))
    c = G.render_images(items, 32, np.random.default_rng(2))
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_generation_is_independent_of_worker_count():
    items = _items(40) * 8  # 320 items: two chunks
    one = G.generate(items, 16, [5, 0], AugmentConfig(), workers=1)
    two = G.generate(items, 16, [5, 0], AugmentConfig(), workers=2)
    assert np.array_equal(one, two)
    assert not np.array_equal(one[:40], one[40:80])  # same items, other augmentations


def _ink_correlation(images, mask):
    """Per image: correlation of |luminance - background| with the (downsampled) glyph mask."""
    n, size = len(images), images.shape[1]
    ref = mask.reshape(size, 2, size, 2).mean(axis=(1, 3)).ravel()
    lum = images.astype(float) @ [0.299, 0.587, 0.114]
    border = np.median(np.concatenate([lum[:, :2].reshape(n, -1), lum[:, -2:].reshape(n, -1)], 1), 1)
    ink = np.abs(lum - border[:, None, None]).reshape(n, -1)
    return np.array([np.corrcoef(i, ref)[0, 1] for i in ink])


def test_augmentation_places_the_glyph_and_varies_it():
    from edgecl.data.augment import NONE

    mask = G.render_mask(_face("DejaVuSans").path, 0, ord("H"), 64)
    assert mask.max() == 255 and mask[:, :4].max() == 0 and mask[:4].max() == 0  # centred, with a margin
    masks = np.stack([mask] * 16)
    plain = augment(masks, 32, np.random.default_rng(0), NONE)
    assert _ink_correlation(plain, mask).mean() > 0.8  # ink where the glyph is (colours aside)
    varied = augment(masks, 32, np.random.default_rng(0))
    assert _ink_correlation(varied, mask).mean() < 0.5  # warped, blurred, textured
    assert np.abs(varied.astype(int) - plain).mean() > 20


def test_cmap_decides_presence_not_pillow():
    sans = _face("DejaVuSans")
    assert ord("A") in sans and 0x4E00 not in sans
    # Pillow draws a .notdef box for a missing glyph: a rendering cannot tell presence
    assert G.render_mask(sans.path, 0, 0x4E00, 32).any()
    # cmr10 has a TeX encoding behind its cmap: '"' is the glyph quotedblright there
    assert ord("A") in _face("cmr10") and ord('"') not in _face("cmr10")
    cfg = G.GlyphConfig(**TINY, split="within", seed=3)
    faces = {f.path: f for f in matplotlib_faces()}
    _, splits = G.plan(cfg)
    for items, _ in splits.values():
        assert all(cp in faces[path] for path, _, cp in items)


def test_pool_has_thousands_of_classes_without_look_alikes():
    pool = dict(G.benchmark_pool())
    assert len(pool) > 2000
    assert all(len(fs) >= G.MIN_FONTS for fs in pool.values())
    assert ord("A") in pool and 0x391 not in pool and 0x410 not in pool  # Greek Alpha, Cyrillic A
    assert 0x2010 not in pool or ord("-") not in pool  # hyphen vs U+2010 HYPHEN


def test_cross_split_holds_out_fonts():
    cfg = G.GlyphConfig(**TINY, split="cross")
    classes, splits = G.plan(cfg)
    train_fonts = {p for p, _, _ in splits["train"][0]}
    test_fonts = {p for p, _, _ in splits["test"][0]}
    italic = {f.path for f in matplotlib_faces() if f.italic}
    assert train_fonts and test_fonts and not train_fonts & test_fonts
    assert test_fonts <= italic and not train_fonts & italic
    within_classes, within = G.plan(G.GlyphConfig(**TINY, split="within"))
    assert within_classes == classes  # same classes: within vs cross isolates the font shift
    assert {p for p, _, _ in within["test"][0]} & train_fonts


def test_cache_hit_is_equal_and_does_not_regenerate(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))
    cfg = G.GlyphConfig(**TINY, split="cross", seed=1)
    train, test = G.make_glyphs(cfg)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (20, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [3] * 10 and train.class_names[0].startswith("U+")
    monkeypatch.setattr(G, "generate", lambda *a, **k: pytest.fail("regenerated a cached data set"))
    train2, test2 = G.make_glyphs(cfg)
    assert isinstance(train2.images, np.memmap)
    assert np.array_equal(train.images, train2.images) and np.array_equal(test.labels, test2.labels)
    assert train2.class_names == train.class_names


def test_different_seed_gives_other_data(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))
    a, _ = G.make_glyphs(G.GlyphConfig(**TINY, seed=1))
    b, _ = G.make_glyphs(G.GlyphConfig(**TINY, seed=2))
    assert a.class_names != b.class_names and not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("damage", ["truncate", "meta", "delete"])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))
    cfg = G.GlyphConfig(**TINY, seed=4)
    train, _ = G.make_glyphs(cfg)
    good = np.array(train.images)
    (entry,) = [p for p in (tmp_path / "glyphs").iterdir() if p.name.startswith("glyphs")]
    target = entry / "x_train.npy"
    if damage == "truncate":  # a partial write
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:
        target.unlink()
    del train
    again, _ = G.make_glyphs(cfg)
    assert np.array_equal(again.images, good)
    assert not [p for p in (tmp_path / "glyphs").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_failed_generation_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        G.make_glyphs(G.GlyphConfig(**TINY, seed=5))
    assert [p.name for p in (tmp_path / "glyphs").iterdir() if not p.name.startswith("font-table")] == []


def test_load_dataset_spec():
    train, test = load_dataset("glyphs:10:cross:32", train_per_class=3, test_per_class=2, seed=7)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (20, 32, 32, 3)
    assert train.class_names == test.class_names and len(set(train.class_names)) == 10
    italic = {f.name for f in matplotlib_faces() if f.italic}  # each image's font is its domain
    assert set(test.domains) <= italic and not set(train.domains) & italic


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("glyphs", "bad spec"),
        ("glyphs:abc", "not an integer"),
        ("glyphs:0", "classes"),
        ("glyphs:100000", "classes"),
        ("glyphs:10:sideways", "not a split"),
        ("glyphs:10:cross:cross", "repeats"),
        ("glyphs:10:4", "size"),
        ("glyphs:10:cross:64:x", "bad spec"),
    ],
)
def test_bad_glyph_specs(spec, msg):
    with pytest.raises(DataError, match=msg):
        load_dataset(spec)


def test_pretrain_batches_are_fresh_and_deterministic():
    a = list(G.pretrain_batches(50, batch_size=8, size=32, seed=3, num_batches=2))
    b = list(G.pretrain_batches(50, batch_size=8, size=32, seed=3, num_batches=2, workers=2))  # background processes
    assert len(a) == 2 and a[0][0].shape == (8, 32, 32, 3) and a[0][0].dtype == np.uint8
    assert all(np.array_equal(x, y) and np.array_equal(l, m) for (x, l), (y, m) in zip(a, b))
    assert not np.array_equal(a[0][0], a[1][0])  # new augmentations every batch
    assert a[0][1].min() >= 0 and a[0][1].max() < 50


def test_pretrain_classes_are_a_stable_prefix():
    small, _, used = G.pretrain_classes(20)
    large, _, used2 = G.pretrain_classes(40)
    assert used == used2 and large[:20] == small


@pytest.mark.skipif(not G._cjk_pool()[1], reason="fonts-noto-cjk not installed")
def test_cjk_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))
    ds = G.pretrain_corpus(12, 2, size=32, source="cjk")
    assert ds.images.shape == (24, 32, 32, 3) and ds.num_classes == 12
    cps = [int(n[2:], 16) for n in ds.class_names]
    assert all(0x4E00 <= cp < 0xA000 for cp in cps)
    assert np.array_equal(G.pretrain_corpus(12, 2, size=32, source="cjk").images, ds.images)


def test_fallback_is_disjoint_from_the_benchmark(monkeypatch):
    monkeypatch.setattr(G, "_cjk_pool", lambda: ((), ()))
    with pytest.warns(UserWarning, match="fonts-noto-cjk"):
        cps, faces, used = G.pretrain_classes(len(G.fallback_pool()), source="auto")
    assert used == "matplotlib" and len(cps) > 1000
    benchmark = {cp for cp, _ in G.benchmark_pool()}
    assert not set(cps) & benchmark
    assert 0x410 not in cps  # Cyrillic A looks like the benchmark's Latin A
    with pytest.raises(DataError, match="apt-get install fonts-noto-cjk"):
        G.pretrain_classes(10, source="cjk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = next(G.pretrain_batches(30, batch_size=4, size=16))
    assert x.shape == (4, 16, 16, 3)


def test_preview_cli(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgecl.cli import main

    out = tmp_path / "grid.png"
    res = CliRunner().invoke(main, ["data", "preview", "shapes:10", "--out", str(out), "--count", "12", "--cols", "4", "--scale", "1"])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (4 * 34 + 2, 3 * 34 + 2)
    res = CliRunner().invoke(main, ["data", "preview", "glyphs:x", "--out", str(out)])
    assert res.exit_code != 0 and "not an integer" in res.output


def test_concurrent_maker_keeps_one_whole_entry(tmp_path, monkeypatch):
    """A maker that finishes while another is still building: the slower one keeps the entry."""
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))

    def build(value):
        def write(tmp):
            if value == 1:  # while this maker builds, another one completes the same entry
                G.materialise("t", {"k": 1}, build(2))
            np.save(tmp / "x.npy", np.full(4, value, np.uint8))

        return write

    out = G.materialise("t", {"k": 1}, build(1))
    assert out["x"].tolist() == [2, 2, 2, 2]
    entries = list((tmp_path / "glyphs").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary directory left
