"""Merging bundles grown on different devices from one export is exact, for every head kind."""

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl_runtime import Bundle, IncompatibleBundleError, store
from tests.fixtures import copy_fixture, embeddings, images, with_head_kind

KINDS = ["prototype_cosine", "ridge", "gaussian", "subspace_cosine"]

# (device, op, class, seed): the updates each device makes, in order
A_OPS = [("add", "cat", 1), ("add", "alpha", 2), ("add", "dog", 3)]
B_OPS = [("add", "eel", 4), ("add", "alpha", 5), ("add", "cat", 6), ("remove", "beta", 0), ("add", "fox", 7)]


def run(d, ops):
    for op, name, seed in ops:
        if op == "add":
            store.add_examples(d, name, embeddings(seed, 3))
        else:
            store.remove_class(d, name)


def arrays(d):
    st = store.read_state(d)
    return st.classes, st.head.arrays()


def assert_same(x, y):
    (cx, ax), (cy, ay) = x, y
    assert cx == cy
    assert sorted(ax) == sorted(ay)
    for k in ax:
        np.testing.assert_allclose(ax[k], ay[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(params=KINDS)
def origin(request, tmp_path):
    return with_head_kind(copy_fixture(tmp_path / "origin"), request.param)


def devices(origin, tmp_path, *names):
    import shutil

    return [shutil.copytree(origin, tmp_path / n) for n in names]


def test_merge_equals_one_device_that_saw_everything(origin, tmp_path):
    a, b, one = devices(origin, tmp_path, "a", "b", "one")
    run(a, A_OPS)
    run(b, B_OPS)
    run(one, A_OPS + B_OPS)
    merged = store.merge(a, b, tmp_path / "out")
    assert merged.path == tmp_path / "out"
    assert_same(arrays(tmp_path / "out"), arrays(one))
    assert "beta" not in merged.classes and merged.classes[-3:] == ["dog", "eel", "fox"]
    h = store.history(tmp_path / "out")["updates"]
    assert [u.get("merged_from") is not None for u in h] == [False] * 3 + [True] * 5
    # merging again changes nothing (updates are recognised by id); A and B are untouched
    seq = store.read_state(tmp_path / "out").seq
    store.merge(tmp_path / "out", b)
    assert store.read_state(tmp_path / "out").seq == seq
    assert store.read_state(a).seq == 3 and store.read_state(b).seq == 5


def test_merge_after_compaction_and_copies_counts_nothing_twice(origin, tmp_path):
    import shutil

    (a,) = devices(origin, tmp_path, "a")
    run(a, A_OPS)
    x = shutil.copytree(a, tmp_path / "x")  # a device cloned from A after A's updates
    run(x, B_OPS)
    store.compact(a)  # A's updates are now folded into its base
    store.merge(a, x)
    one = devices(origin, tmp_path, "one")[0]
    run(one, A_OPS + B_OPS)
    assert_same(arrays(a), arrays(one))


def test_merge_refuses_different_exports_and_compacted_other(tmp_path):
    a = copy_fixture(tmp_path / "a")
    other = with_head_kind(copy_fixture(tmp_path / "other"), "gaussian")  # a different export
    with pytest.raises(IncompatibleBundleError, match="different exports"):
        store.merge(a, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    b = copy_fixture(tmp_path / "b")
    run(b, B_OPS)
    store.compact(b)
    with pytest.raises(IncompatibleBundleError, match="compacted after 5 update"):
        store.merge(a, b, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_bundle_merge_and_cli(tmp_path):
    from edgecl.cli import main

    origin = copy_fixture(tmp_path / "origin")
    a, b = devices(origin, tmp_path, "a", "b")
    ba, bb = Bundle.load(a), Bundle.load(b)
    ba.add_class("mug", images(1))
    bb.add_class("cup", images(2))
    merged = ba.merge(bb, tmp_path / "m")
    assert merged.classes[-2:] == ["mug", "cup"] and len(merged.predict(images(3)).labels) == 3
    out = CliRunner().invoke(main, ["merge", str(a), str(b), "--out", str(tmp_path / "m2")])
    assert out.exit_code == 0, out.output
    assert "merged 1 update(s) from 1 bundle(s)" in out.output
    assert_same(arrays(tmp_path / "m"), arrays(tmp_path / "m2"))
    out = CliRunner().invoke(main, ["merge", str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "m3")])
    assert out.exit_code == 1 and "MissingFileError" in out.output
