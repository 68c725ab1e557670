"""edgecl_runtime.blas: numpy's BLAS threads held to one while the runtime works, and restored after."""

import threading

import numpy as np
import pytest

from edgecl_runtime import Bundle, blas
from edgecl_runtime.benchmark import interleaved
from edgecl_runtime.errors import InvalidInputError

needs_openblas = pytest.mark.skipif(blas.backend() is None, reason="numpy's BLAS is not an OpenBLAS edgecl_runtime.blas controls")


@pytest.fixture
def two_blas_threads():
    """numpy's BLAS at 2 threads for the test (the tests need a number above 1 to see the limit)."""
    found = blas._library()
    before = blas.threads()
    found[1](2)
    yield
    found[1](before)


@needs_openblas
def test_limit_sets_and_restores(two_blas_threads):
    assert blas.threads() == 2
    with blas.limit(1):
        assert blas.threads() == 1
        with blas.limit(1):  # nested: still 1, and the inner exit does not restore
            assert blas.threads() == 1
        assert blas.threads() == 1
    assert blas.threads() == 2
    with blas.limit(None):  # None leaves numpy alone
        assert blas.threads() == 2
    with pytest.raises(RuntimeError):
        with blas.limit(1):
            raise RuntimeError("restored on errors too")
    assert blas.threads() == 2


@needs_openblas
def test_overlapping_blocks_in_threads_restore_when_the_last_leaves(two_blas_threads):
    entered, release = threading.Event(), threading.Event()

    def other():
        with blas.limit(1):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=other)
    with blas.limit(1):
        t.start()
        assert entered.wait(5)
    assert blas.threads() == 1  # the other thread's block is still open
    release.set()
    t.join(5)
    assert blas.threads() == 2


@needs_openblas
def test_bundle_scores_on_one_blas_thread_and_restores(bundle_dir, shapes_new, two_blas_threads, monkeypatch):
    b = Bundle.load(bundle_dir, device="cpu")
    seen = []
    inputs = b.head.graph_inputs  # the head's numpy part of scoring (model.onnx scores with its result)
    monkeypatch.setattr(b.head, "graph_inputs", lambda: (seen.append(blas.threads()), inputs())[1], raising=False)
    b.predict(shapes_new[1].images[:4])
    assert seen == [1] and blas.threads() == 2
    b2 = Bundle.load(bundle_dir, device="cpu", blas_threads=None)
    np.testing.assert_allclose(b2.scores(shapes_new[1].images[:4]), b.scores(shapes_new[1].images[:4]), atol=1e-6)


def test_bundle_refuses_bad_blas_threads(bundle_dir):
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(InvalidInputError, match="blas_threads"):
            Bundle.load(bundle_dir, device="cpu", blas_threads=bad)


def test_interleaved_runs_blocks_with_an_untimed_call_first():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=7, warmup=1, block=3)
    assert t["a"]["repeats"] == 7 and t["b"]["repeats"] == 7
    body = "".join(calls[2:])  # after the warm-up round
    # rounds alternate which function goes first; each block is 1 untimed + up to 3 timed calls
    assert body == "aaaa" + "bbbb" + "bbbb" + "aaaa" + "aa" + "bb"
