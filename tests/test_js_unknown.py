"""Unknown images in the Node.js client (runtime/js, issue 30): the same unknown scores as Python (the
count-corrected nearest cosine, also after a class added on the device) and the same images rejected."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl_runtime import Bundle
from tests.conftest import class_images
from tests.fixtures import copy_fixture
from tests.test_node_client import node_modules, run_node, save  # noqa: F401  (node_modules: an autouse fixture)

pytestmark = pytest.mark.skipif(__import__("shutil").which("node") is None,
                                reason="node is not installed: the runtime/js client cannot run (CI installs node)")
TOL = 1e-6


def mixed_images(shapes_new, per_class=3):
    """``per_class`` test images of each of the 100 shapes classes (70 never taught to the bundle)."""
    test = shapes_new[1]
    return np.concatenate([class_images(test, c, per_class) for c in test.class_names])


def top_classes(rows):
    return [[t["class"] for t in row["top_k"]] for row in rows]


def assert_same_decisions(js_rows, py, tol=TOL):
    """Node's unknown scores equal Python's to ``tol``; the same images rejected (but for scores within ``tol`` of
    the threshold, where float32 features may round either way)."""
    u_js = np.array([r["unknown_score"] for r in js_rows])
    np.testing.assert_allclose(u_js, py.unknown_scores, rtol=0, atol=tol)
    clear = np.abs(py.unknown_scores - py.threshold) > tol if py.threshold is not None else np.ones(len(u_js), bool)
    js_rejected = np.array([r["label"] is None for r in js_rows])
    assert (js_rejected[clear] == py.unknown[clear]).all()
    assert [r["label"] for r, c in zip(js_rows, clear) if c] == [label for label, c in zip(py.labels, clear) if c]


def test_unknown_scores_and_rejections_match_python(bundle_dir, shapes_new, tmp_path):
    images = mixed_images(shapes_new)
    py = Bundle.load(bundle_dir).predict(images, unknown="auto")
    assert py.unknown.any() and not py.unknown.all()
    js = run_node("predict", bundle_dir, save(tmp_path, "x", images), "--unknown", "auto")
    assert js["threshold"] == py.threshold
    assert_same_decisions(js["predictions"], py)
    assert all(r["unknown"] == (r["label"] is None) for r in js["predictions"])
    # without --unknown: the same scores, nothing rejected
    plain = run_node("predict", bundle_dir, save(tmp_path, "x", images[:20]))
    assert plain["threshold"] is None and all(r["label"] is not None for r in plain["predictions"])
    np.testing.assert_allclose([r["unknown_score"] for r in plain["predictions"]], py.unknown_scores[:20], atol=TOL)


def test_after_a_class_added_on_the_device(bundle_dir, shapes_new, tmp_path):
    """5 images of a never-taught class, journaled by Python: Node replays them (prototype and count 5, the scaling
    sqrt(1 + r / 5)) and scores and accepts that class's images as Python does."""
    train, test = shapes_new
    b = Bundle.load(bundle_dir)
    name = next(c for c in test.class_names if c not in b.classes)
    images = mixed_images(shapes_new, 2)
    b.add_class(name, class_images(train, name, 5))
    assert int(b.head.counts[-1]) == 5
    own = class_images(test, name)
    py = Bundle.load(bundle_dir).predict(np.concatenate([images, own]), unknown="auto")
    assert py.unknown[len(images):].mean() <= 0.5  # the new class's images are mostly accepted
    js = run_node("predict", bundle_dir, save(tmp_path, "x", np.concatenate([images, own])), "--unknown", "auto")
    assert js["classes"][-1] == name
    assert_same_decisions(js["predictions"], py)


def test_json_lines_are_those_of_the_python_cli(bundle_dir, shapes_new, tmp_path):
    from edgecl_runtime.cli import main

    test = shapes_new[1]
    b = Bundle.load(bundle_dir)
    never = next(c for c in test.class_names if c not in b.classes)
    x = save(tmp_path, "q", np.concatenate([class_images(test, b.classes[0], 2), class_images(test, never, 2)]))
    one = save(tmp_path, "one", class_images(test, b.classes[1], 1)[0])
    args = [str(x), str(one), "--unknown", "auto", "--json", "--top-k", "2"]
    r = CliRunner().invoke(main, ["predict", str(bundle_dir), *args])
    assert r.exit_code == 0, r.output
    py_rows = [json.loads(line) for line in r.output.splitlines()]
    proc = run_node("predict", bundle_dir, *args, ok=False)
    assert proc.returncode == 0, proc.stderr
    js_rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [set(row) for row in js_rows] == [{"image", "label", "unknown_score", "top_k"}] * 5
    assert [(row["image"], row["label"]) for row in js_rows] == [(row["image"], row["label"]) for row in py_rows]
    assert js_rows[0]["label"] == b.classes[0] and js_rows[2]["label"] is None
    np.testing.assert_allclose([row["unknown_score"] for row in js_rows], [row["unknown_score"] for row in py_rows],
                               rtol=0, atol=TOL)
    assert top_classes(js_rows) == top_classes(py_rows)


def test_threshold_options_and_an_uncalibrated_bundle(tmp_path):
    """A number is a threshold; 'auto' on a bundle exported without calibration is refused as in Python; its scores
    (no noise ratio: unscaled cosines) still equal Python's."""
    bundle = copy_fixture(tmp_path / "b", "bundle-v2")
    x = np.random.default_rng(3).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    py = Bundle.load(bundle)
    assert "unknown" not in py.manifest
    ref = py.predict(x)
    proc = run_node("predict", bundle, save(tmp_path, "x", x), "--unknown", "auto", ok=False)
    assert proc.returncode == 1 and "IncompatibleBundleError" in proc.stderr
    assert "no calibrated unknown threshold" in proc.stderr
    cut = float(np.median(ref.unknown_scores))
    js = run_node("predict", bundle, save(tmp_path, "x", x), "--unknown", repr(cut))
    np.testing.assert_allclose([r["unknown_score"] for r in js["predictions"]], ref.unknown_scores, rtol=0, atol=TOL)
    assert_same_decisions(js["predictions"], py.predict(x, unknown=cut))
    proc = run_node("predict", bundle, save(tmp_path, "x", x), "--unknown", "high", ok=False)
    assert proc.returncode == 1 and "expected 'auto' or a number" in proc.stderr
