"""`edgecl cache`: sizes by section, and clearing a section leaves the others, readers and writers whole."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl.cli import main
from edgecl.data.generated import cache_root, load_cached, materialise
from edgecl.features.store import EmbeddingStore


def _tree_bytes(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache with one rendered data entry and one embedding matrix, made by the real writers."""
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path / "cache"))

    def build(tmp):
        np.save(tmp / "images.npy", np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3))

    entry = materialise(cache_root("glyphs"), "tiny", {"n": 4}, build, version=1)
    store = EmbeddingStore(tmp_path / "cache" / "embeddings")
    matrix = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    store.get_or_create("k0", lambda: matrix)
    return tmp_path / "cache", entry, store, matrix


def _cli(*args):
    return CliRunner().invoke(main, ["cache", *args])


def test_info_counts_entries_and_bytes_of_each_section(cache):
    root, *_ = cache
    out = _cli("info", "--json")
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    sections = {s["section"]: s for s in info["sections"]}
    assert list(sections) == ["glyphs", "embeddings"]  # known sections in their order, only those present
    assert sections["glyphs"]["entries"] == 1 and sections["embeddings"]["entries"] == 1  # the lock file is no entry
    for name, s in sections.items():
        assert s["bytes"] == _tree_bytes(root / name) > 0
    assert info["bytes"] == _tree_bytes(root) and info["cache_dir"] == str(root)
    assert "embeddings" in _cli("info").output


def test_clearing_a_section_keeps_the_others_and_open_readers(cache):
    root, _, store, matrix = cache
    held = store.read("k0")  # a run holding the matrix open while another process clears
    fresh_tmp = root / "embeddings" / ".k1.emb.123.abcd.tmp"  # a writer at work
    stale_tmp = root / "embeddings" / ".k2.emb.456.ef01.tmp"  # left by a crash
    for p in (fresh_tmp, stale_tmp):
        p.write_bytes(b"x" * 10)
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))

    dry = json.loads(_cli("clear", "embeddings", "--dry-run", "--json").output)
    assert dry["removed"][0]["entries"] == 1 and store.read("k0") is not None and stale_tmp.exists()

    out = _cli("clear", "embeddings", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["removed"][0]["bytes"] == dry["removed"][0]["bytes"]
    assert store.read("k0") is None and not stale_tmp.exists() and fresh_tmp.exists()
    np.testing.assert_array_equal(held, matrix)  # the open memory map still reads the removed file
    assert load_cached(next(cache_root("glyphs").glob("tiny-*"))) is not None  # the other section is whole
    store.get_or_create("k0", lambda: matrix * 2)  # the next run computes it again
    assert store.misses == 2


def test_a_bad_section_name_removes_nothing(cache):
    root, _, store, _ = cache
    before = _tree_bytes(root)
    out = _cli("clear", "embeddings", "no-such-section")
    assert out.exit_code == 1 and "no cache section no-such-section" in out.output and "embeddings" in out.output
    assert _tree_bytes(root) == before and store.read("k0") is not None
    assert _cli("clear").exit_code == 2  # neither sections nor --all
    assert _cli("clear", "glyphs", "--all").exit_code == 2


def test_clear_all_empties_every_section(cache):
    root, *_ = cache
    out = _cli("clear", "--all")
    assert out.exit_code == 0 and "glyphs: removed 1 entries" in out.output
    info = json.loads(_cli("info", "--json").output)
    assert [s["entries"] for s in info["sections"]] == [0, 0]
