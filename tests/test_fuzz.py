"""Fuzzed input at every boundary of the bundle store (hypothesis).

Every case must end in a documented exception (``edgecl_runtime.errors``) with a
message, and leave every file of the bundle byte-for-byte unchanged.
Example counts are modest so the whole file runs in seconds.
"""

import shutil
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgecl_runtime import (
    Bundle,
    CorruptBundleError,
    EdgeclRuntimeError,
    IncompatibleBundleError,
    InvalidInputError,
    MissingFileError,
    store,
)
from edgecl_runtime.inputs import MAX_NAME_CHARS
from tests.fixtures import copy_fixture, embeddings, images, snapshot

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """The v2 fixture after three updates, so it has a journal, a base and a current head file."""
    d = copy_fixture(tmp_path_factory.mktemp("fuzz") / "pristine")
    store.add_examples(d, "cat", embeddings(1))
    store.add_examples(d, "alpha", embeddings(2))
    store.remove_class(d, "beta")
    store.snapshot(d)  # updates 2 and 3 were journal-only: make them part of the head file too
    (d / ".lock").unlink()
    return d


@pytest.fixture(scope="module")
def bundle(grown, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-live") / "b"
    shutil.copytree(grown, d)
    return Bundle.load(d)


def refused(exc_info):
    assert isinstance(exc_info.value, EdgeclRuntimeError) and str(exc_info.value)


# -------------------------------------------------------------------- images
_bad_dtypes = st.sampled_from([np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint64,
                               np.complex64, np.dtype("U2"), object])
_dim = st.integers(1, 6)


@st.composite
def bad_images(draw):
    kind = draw(st.sampled_from(["rank", "dtype", "nonfinite", "range", "empty", "channels", "huge", "list", "type"]))
    n, h, w = draw(_dim), draw(_dim), draw(_dim)
    if kind == "rank":
        ndim = draw(st.sampled_from([0, 1, 5, 6]))
        return np.zeros(draw(st.lists(_dim, min_size=ndim, max_size=ndim)), np.uint8)
    if kind == "dtype":
        return np.zeros((n, h, w, 3), draw(_bad_dtypes))
    if kind == "nonfinite":
        x = np.full((n, h, w, 3), 0.5, draw(st.sampled_from([np.float16, np.float32, np.float64])))
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return x
    if kind == "range":
        return np.full((n, h, w, 3), draw(st.sampled_from([-0.01, 1.01, 255.0, -1e30])), np.float32)
    if kind == "empty":
        shape = [n, h, w, 3]
        shape[draw(st.integers(0, 2))] = 0
        return np.zeros(shape, np.uint8)
    if kind == "channels":
        return np.zeros((n, h, w, draw(st.sampled_from([2, 5, 7]))), np.uint8)
    if kind == "huge":  # zero-stride views: huge shapes without the memory
        side = draw(st.sampled_from([9000, 20000, 100000]))
        return np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (draw(st.integers(1, 40)), side, side, 3))
    if kind == "list":
        good = [np.zeros((h, w, 3), np.uint8) for _ in range(n)]
        good.insert(draw(st.integers(0, n)), draw(st.sampled_from([np.zeros((h, w, 3), np.int32), np.zeros(7), None, "x"])))
        return good
    return draw(st.sampled_from([None, "image.png", 3.5, {"x": 1}, []]))


@FUZZ
@given(x=bad_images())
def test_bad_images_are_refused_and_change_nothing(bundle, x):
    snap, classes = snapshot(bundle.path), bundle.classes
    with pytest.raises(InvalidInputError) as e:
        bundle.add_class("fuzzed", x)
    refused(e)
    assert snapshot(bundle.path) == snap and bundle.classes == classes
    if not (isinstance(x, np.ndarray) and x.size > 1 << 24):  # predict has no size budget of its own
        with pytest.raises(InvalidInputError):
            bundle.predict(x)


# --------------------------------------------------------------- class names
_bad_names = st.one_of(
    st.just(""),
    st.text(" \t\n\u3000", min_size=1, max_size=5),
    st.builds(lambda a, c: a + c, st.text(min_size=0, max_size=5), st.characters(categories=["Cc", "Cs", "Zl", "Zp"])),
    st.builds(lambda a, b: f"{a}/{b}", st.text(max_size=5), st.text(max_size=5)),
    st.sampled_from(["..", ".", "../x", "..\\x", "a\\b", "x\u202e", "\udcff", "ok\x00", " padded", "padded "]),
    st.text(min_size=MAX_NAME_CHARS + 1, max_size=MAX_NAME_CHARS + 50).filter(lambda s: s.strip() == s and s),
    st.binary(min_size=1, max_size=8),
    st.integers(),
    st.none(),
)


@FUZZ
@given(name=_bad_names)
def test_bad_class_names_are_refused_and_change_nothing(bundle, name):
    snap = snapshot(bundle.path)
    with pytest.raises(InvalidInputError) as e:
        bundle.add_class(name, images(0, 2))
    refused(e)
    if isinstance(name, str):
        with pytest.raises(InvalidInputError):
            bundle.remove_class(name)
    assert snapshot(bundle.path) == snap


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=40))
def test_every_accepted_name_round_trips_exactly(grown, tmp_path_factory, name):
    from edgecl_runtime.inputs import class_name

    try:
        valid = class_name(name)
    except InvalidInputError:
        assume(False)
    d = tmp_path_factory.mktemp("names") / "b"
    shutil.copytree(grown, d)
    n = len(store.read_state(d).classes)
    store.add_examples(d, name, embeddings(3, 1))
    store.add_examples(d, unicodedata.normalize("NFD", name), embeddings(4, 1))  # the same class, not a duplicate
    st_ = store.read_state(d)
    assert st_.classes[-1] == valid == unicodedata.normalize("NFC", name) and len(st_.classes) == n + 1
    assert st_.head.counts[-1] == 2
    shutil.rmtree(d)


# ---------------------------------------------------------------- bad files
FILES = ["backbone.onnx", "head-000000.npz", "head-000002.npz", "journal-000000.log", "manifest.json"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fname=st.sampled_from(FILES), how=st.sampled_from(["truncate", "flip"]), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_truncated_or_bit_flipped_files_are_refused(grown, tmp_path_factory, fname, how, where, bit):
    d = tmp_path_factory.mktemp("bad") / "b"
    shutil.copytree(grown, d)
    p = d / fname
    data = bytearray(p.read_bytes())
    i = min(int(where * len(data)), len(data) - 1)
    if how == "truncate":
        assume(bytes(data[i:]).strip() != b"")  # dropping the manifest's final newline loses nothing
        data = data[:i]
    else:
        data[i] ^= 1 << bit
    p.write_bytes(bytes(data))
    snap = snapshot(d)
    with pytest.raises((CorruptBundleError, MissingFileError, IncompatibleBundleError)) as e:
        Bundle.load(d)
    refused(e)
    # Updates check the manifest, head and base files; the journal chain is checked in full by loads,
    # history, rollback, compact and merge; the backbone by loads (an update only needs embeddings).
    if fname == "journal-000000.log":
        with pytest.raises(CorruptBundleError):
            store.history(d)
    elif fname != "backbone.onnx":
        with pytest.raises((CorruptBundleError, MissingFileError, IncompatibleBundleError)):
            store.add_examples(d, "new", embeddings(5, 1))
    assert snapshot(d) == snap
    shutil.rmtree(d)
