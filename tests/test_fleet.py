"""Fleets: many devices' bundles merged into one that equals one device having seen every example; diffs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl_runtime import Bundle, IncompatibleBundleError, store
from edgecl_runtime.cli import main
from tests.conftest import ROOT
from tests.fixtures import copy_fixture, embeddings, snapshot, with_head_kind

KINDS = ["prototype_cosine", "ridge", "gaussian"]
SHARED = ["cat", "dog", "alpha"]  # taught on several devices ("alpha" is a class of the base)


def device_ops(i: int) -> list[tuple[str, int, int]]:
    """Device ``i``'s additions: (class, seed, examples); two of its own classes and two shared names."""
    return [(f"d{i}-a", 100 * i + 1, 3), (SHARED[i % 3], 100 * i + 2, 2), (f"d{i}-b", 100 * i + 3, 4),
            (SHARED[(i + 1) % 3], 100 * i + 4, 1)]


def teach(d, ops):
    for name, seed, k in ops:
        store.add_examples(d, name, embeddings(seed, k))


@pytest.fixture(params=KINDS)
def origin(request, tmp_path):
    return with_head_kind(copy_fixture(tmp_path / "origin"), request.param)


def fleet(origin, root, n):
    devices = []
    for i in range(n):
        d = shutil.copytree(origin, root / f"dev{i}")
        teach(d, device_ops(i))
        devices.append(d)
    return devices


def statistics(d):
    """Classes, counts and every class's statistics (and the ridge Gram matrix) of a bundle."""
    st = store.read_state(d)
    h = st.head
    stats = {n: {k: np.asarray(v, np.float64) for k, v in h.class_statistics(i).items()} for i, n in enumerate(st.classes)}
    shared = {"G": np.asarray(h.G), "weights": np.asarray(h.weights)} if hasattr(h, "G") else {}
    return st.classes, [int(c) for c in h.counts], stats, shared


def assert_equal_to_replay(merged, one):
    cm, nm, sm, gm = statistics(merged)
    co, no, so, go = statistics(one)
    assert cm == co and nm == no  # identical class lists and example counts
    for name in cm:
        for key in sm[name]:
            np.testing.assert_allclose(sm[name][key], so[name][key], rtol=1e-5, atol=1e-6, err_msg=f"{name}.{key}")
    for key in gm:
        np.testing.assert_allclose(gm[key], go[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_many_device_merge_equals_one_device_that_saw_everything(origin, tmp_path):
    devices = fleet(origin, tmp_path, 7)
    one = shutil.copytree(origin, tmp_path / "one")
    for i in range(7):
        teach(one, device_ops(i))
    st = store.merge(origin, devices, tmp_path / "out")
    assert st.path == tmp_path / "out"
    assert_equal_to_replay(tmp_path / "out", one)
    classes = store.read_state(tmp_path / "out").classes
    assert classes.count("cat") == 1 and classes[:3] == store.read_state(origin).classes
    # counts of a shared name add up over the devices that taught it
    counts = dict(zip(classes, statistics(tmp_path / "out")[1]))
    assert counts["cat"] == sum(k for i in range(7) for n, _, k in device_ops(i) if n == "cat")
    # every device's update is in the output's journal once, with where it came from
    h = store.history(tmp_path / "out")["updates"]
    assert len(h) == 28 and {u["merged_from"] for u in h} == {str(d) for d in devices}
    # merging the fleet again, in place, changes nothing; the inputs are untouched
    seq = store.read_state(tmp_path / "out").seq
    store.merge(tmp_path / "out", devices)
    assert store.read_state(tmp_path / "out").seq == seq
    assert all(store.read_state(d).seq == 4 for d in devices)


def test_in_place_merge_and_a_device_that_removed_a_class(origin, tmp_path):
    devices = fleet(origin, tmp_path, 3)
    store.remove_class(devices[1], "d1-a")  # a class added on the device, then forgotten there
    store.add_examples(devices[1], "d1-a", embeddings(999, 2))  # and taught again
    one = shutil.copytree(origin, tmp_path / "one")
    for i, d in enumerate(devices):
        teach(one, device_ops(i))
        if i == 1:
            store.remove_class(one, "d1-a")
            store.add_examples(one, "d1-a", embeddings(999, 2))
    base = shutil.copytree(origin, tmp_path / "base")
    store.merge(base, devices)
    assert_equal_to_replay(base, one)


def test_a_foreign_device_is_refused_and_nothing_is_written(tmp_path):
    origin = copy_fixture(tmp_path / "origin")
    devices = fleet(origin, tmp_path, 3)
    foreign = with_head_kind(copy_fixture(tmp_path / "foreign"), "gaussian")  # another export
    with pytest.raises(IncompatibleBundleError, match=f"cannot merge {foreign}.*different exports"):
        store.merge(origin, devices[:2] + [foreign, devices[2]], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    before = snapshot(origin)  # in place: refused before the first device is merged
    with pytest.raises(IncompatibleBundleError, match="different exports"):
        store.merge(origin, devices[:2] + [foreign])
    assert snapshot(origin) == before
    out = CliRunner().invoke(main, ["merge", str(origin), str(devices[0]), str(foreign), "--out", str(tmp_path / "o2")])
    assert out.exit_code == 1 and "IncompatibleBundleError" in out.output and not (tmp_path / "o2").exists()


def test_merge_cli_many_inputs_json(tmp_path):
    origin = copy_fixture(tmp_path / "origin")
    devices = fleet(origin, tmp_path, 4)
    out = CliRunner().invoke(main, ["merge", str(origin), *map(str, devices), "--out", str(tmp_path / "m"), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report == {"out": str(tmp_path / "m"), "devices": 4, "updates_merged": 16, "classes": 3 + 8 + 2}
    assert CliRunner().invoke(main, ["merge", str(origin), str(devices[0])]).exit_code == 2  # --out is required
    merged = Bundle.load(origin).merge([Bundle.load(devices[0]), *devices[1:]], tmp_path / "b")  # the Python API
    assert merged.classes == store.read_state(tmp_path / "m").classes and merged.path == tmp_path / "b"
    assert store.diff(tmp_path / "m", tmp_path / "b")["changed"] == []


def test_diff_python_and_cli(tmp_path):
    origin = copy_fixture(tmp_path / "origin")
    a = shutil.copytree(origin, tmp_path / "a")
    b = shutil.copytree(origin, tmp_path / "b")
    store.add_examples(a, "kept", embeddings(1))
    store.add_examples(b, "kept", embeddings(1))  # same examples: unchanged
    store.add_examples(b, "mug", embeddings(2, 4))  # added
    store.add_examples(b, "alpha", embeddings(3, 2))  # changed: more examples
    store.remove_class(b, "beta")  # removed
    d = store.diff(a, b)
    assert d["same_export"] and d["classes"] == [4, 4]
    assert d["added"] == [{"class": "mug", "examples": 4}]
    assert [c["class"] for c in d["removed"]] == ["beta"]
    assert [(c["class"], c["examples"][1] - c["examples"][0]) for c in d["changed"]] == [("alpha", 2)]
    assert d["unchanged"] == 2  # gamma and kept
    assert store.diff(a, a)["changed"] == [] and store.diff(a, a)["unchanged"] == 4
    out = CliRunner().invoke(main, ["diff", str(a), str(b), "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == json.loads(json.dumps(d))
    text = CliRunner().invoke(main, ["diff", str(a), str(b)]).output
    assert "+ 'mug' (4 examples)" in text and "- 'beta'" in text and "~ 'alpha'" in text
    assert "1 added, 1 removed, 1 changed, 2 unchanged" in text


def test_diff_sees_statistics_with_the_same_count(tmp_path):
    origin = with_head_kind(copy_fixture(tmp_path / "origin"), "gaussian")
    a = shutil.copytree(origin, tmp_path / "a")
    b = shutil.copytree(origin, tmp_path / "b")
    store.add_examples(a, "x", embeddings(1, 3))
    store.add_examples(b, "x", embeddings(2, 3))  # same count, other examples
    d = store.diff(a, b)
    assert [c["class"] for c in d["changed"]] == ["x"] and d["changed"][0]["examples"] == [3, 3]
    assert d["changed"][0]["max_abs_difference"] > 1e-3


def test_merge_of_a_device_compacted_after_foreign_updates_is_refused(tmp_path):
    origin = copy_fixture(tmp_path / "origin")
    a, b = fleet(origin, tmp_path, 2)
    store.compact(b)
    with pytest.raises(IncompatibleBundleError, match="compacted after 4 update"):
        store.merge(origin, [a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


KILL_TRIALS = 24

MERGE_CHILD = r"""
import sys, time
from edgecl_runtime import storage, store
def slow(name):  # widen the windows between a merge's steps, so kills land inside them
    time.sleep(0.01)
storage.crash_point = slow
base, out, devices = sys.argv[1], sys.argv[2], sys.argv[3:]
print("ready", flush=True)
store.merge(base, devices, out)
"""


def test_sigkill_during_a_many_input_merge_leaves_out_absent_or_complete(tmp_path):
    origin = copy_fixture(tmp_path / "origin")
    devices = fleet(origin, tmp_path, 12)
    reference = tmp_path / "reference"
    store.merge(origin, devices, reference)
    want = statistics(reference)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    seen = {"absent": 0, "complete": 0}
    for trial in range(KILL_TRIALS):
        out = tmp_path / f"out{trial}"
        child = subprocess.Popen([sys.executable, "-c", MERGE_CHILD, str(origin), str(out), *map(str, devices)],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        if out.exists():
            got = statistics(out)
            assert got[:2] == want[:2] and store.read_state(out, verify=True).seq == store.read_state(reference).seq
            seen["complete"] += 1
        else:
            seen["absent"] += 1
    assert seen["absent"] and seen["complete"], seen
    absent = next(t for t in range(KILL_TRIALS) if not (tmp_path / f"out{t}").exists())
    store.merge(origin, devices, tmp_path / f"out{absent}")  # the next merge to OUT removes a killed one's temporary
    assert statistics(tmp_path / f"out{absent}")[:2] == want[:2] and not list(tmp_path.glob(f".out{absent}.*"))
