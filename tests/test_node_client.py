"""The Node.js client (runtime/js) against the Python runtime on the same bundles: preprocessing, top-1
predictions, classes added on the device (new and extended), and journal replay."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from edgecl_runtime import Bundle, store
from edgecl_runtime.manifest import FORMAT_VERSION
from edgecl_runtime.preprocess import preprocess, resize
from tests.conftest import ROOT, class_images
from tests.fixtures import copy_fixture

NODE = shutil.which("node")
JS = ROOT / "runtime" / "js"
INSTALL = "cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund  (.ci/setup-system.sh runs it)"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the runtime/js client cannot run (CI installs node)")


@pytest.fixture(scope="module", autouse=True)
def node_modules():
    if not (JS / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        pytest.fail(f"runtime/js/node_modules lacks onnxruntime-node: run `{INSTALL}`")


def run_node(*args, ok=True):
    """Run the JS CLI; its parsed JSON output (``ok``) or the completed process (``ok=False``)."""
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), *map(str, args)], capture_output=True, text=True, timeout=600)
    if not ok:
        return proc
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def save(tmp_path, name, images):
    path = tmp_path / f"{name}.npy"
    np.save(path, images)
    return path


def test_node_unit_tests():
    """runtime/js/test: format readers (safetensors header validation, npy, npz, ONNX metadata), journal, head."""
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    assert files
    proc = subprocess.run([NODE, "--test", *files], cwd=JS, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("shape", [(3, 37, 53, 3), (2, 20, 24, 3), (2, 100, 17, 3), (2, 9, 200, 4), (1, 70, 90, 1), (2, 32, 32, 3)])
def test_preprocessing_matches_python(bundle_dir, tmp_path, shape):
    x = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    out = tmp_path / "x.npy"
    run_node("preprocess", bundle_dir, save(tmp_path, "images", x), out)
    p = Bundle.load(bundle_dir).manifest["preprocess"]
    ref = preprocess(x, p["input_size"], p["mean"], p["std"])
    got = np.load(out)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    if shape[1:3] == tuple(p["input_size"][1:]):  # no resize: the same float32 operations
        np.testing.assert_array_equal(got, ref)


def odd_sized(images):
    """The images resized to 45x41 (so both clients resize them back to the model's input size)."""
    return np.clip(np.round(resize(images, (45, 41))), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", ["native", "45x41"])
def test_predictions_agree_with_python_on_1000_images(bundle_dir, shapes_new, tmp_path, size):
    images = shapes_new[1].images  # 100 classes x 10, 70 of them unseen by the bundle
    images = images if size == "native" else odd_sized(images)
    assert len(images) >= 500
    py = Bundle.load(bundle_dir)
    assert run_node("info", bundle_dir)["format_version"] == py.manifest["format_version"] == FORMAT_VERSION
    scores = py.scores(images)
    pred = py.predict(images)
    js = run_node("predict", bundle_dir, save(tmp_path, "test", images))
    assert js["classes"] == py.classes
    idx = np.array([r["index"] for r in js["predictions"]])
    np.testing.assert_allclose([r["score"] for r in js["predictions"]], pred.scores, atol=1e-4)
    top2 = np.sort(scores, axis=1)[:, -2:]
    differ = np.nonzero(idx != pred.indices)[0]
    # a different top-1 is only acceptable on a near-tie of Python's two best scores
    assert [i for i in differ if top2[i, 1] - top2[i, 0] > 1e-4] == []
    assert len(differ) <= len(images) // 200


def test_added_class_matches_python(bundle_dir, shapes_new, tmp_path):
    train = shapes_new[0]
    new = class_images(train, train.class_names[40])
    old_name = Bundle.load(bundle_dir).classes[3]
    more = class_images(train, old_name)
    # the same updates in Node (in memory) and in Python (journaled), from the same state
    js_new = run_node("add-class", bundle_dir, "new one", save(tmp_path, "new", new), "--dry-run")
    js_ext = run_node("add-class", bundle_dir, old_name, save(tmp_path, "more", more), "--dry-run")
    py = Bundle.load(bundle_dir)
    r_new = py.add_class("new one", new)
    r_ext = py.add_class(old_name, more)
    for js, r in ((js_new, r_new), (js_ext, r_ext)):
        assert (js["created"], js["examples_added"], js["total_examples"]) == (r.created, r.examples_added, r.total_examples)
        proto = py.head.prototypes[py.classes.index(r.name)]
        np.testing.assert_allclose(np.array(js["prototype"], np.float32), proto, rtol=0, atol=1e-6)
    assert js_new["classes"] == py.classes
    # both predict the new class for its own images
    assert {p["label"] for p in run_node("predict", bundle_dir, save(tmp_path, "new", new))["predictions"]} == {"new one"}


def test_committed_format_2_fixture(tmp_path):
    """A format-2 bundle (backbone.onnx + numpy.savez head, scored in JS) predicts and learns as in Python."""
    bundle = copy_fixture(tmp_path / "b", "bundle-v2")
    x = np.random.default_rng(5).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    js = run_node("predict", bundle, save(tmp_path, "x", x), "--top-k", "3")
    py = Bundle.load(bundle).predict(x, top_k=3)
    assert [r["index"] for r in js["predictions"]] == py.indices.tolist()
    assert [[c for c, _ in r["top_k"]] for r in js["predictions"]] == [[c for c, _ in row] for row in py.top_k]
    js_add = run_node("add-class", bundle, "delta", save(tmp_path, "x", x[:7]), "--dry-run")
    b = Bundle.load(bundle)
    b.add_class("delta", x[:7])
    np.testing.assert_array_equal(np.array(js_add["prototype"], np.float32), b.head.prototypes[-1])


def test_dry_run_is_required_and_bad_names_are_refused(bundle_dir, shapes_new, tmp_path):
    imgs = save(tmp_path, "x", shapes_new[0].images[:2])
    proc = run_node("add-class", bundle_dir, "x", imgs, ok=False)
    assert proc.returncode == 1 and "--dry-run" in proc.stderr
    proc = run_node("add-class", bundle_dir, " x", imgs, "--dry-run", ok=False)
    assert proc.returncode == 1 and "InvalidInputError" in proc.stderr and "whitespace" in proc.stderr


def journaled(bundle_dir, shapes_new):
    """The bundle after Python's updates (a snapshot, then journal-only records): adds, an extension, a removal."""
    train = shapes_new[0]
    b = Bundle.load(bundle_dir)
    for c in (50, 51, 52):
        b.add_class(f"added-{c}", class_images(train, train.class_names[c]))
    b.add_class(b.classes[0], class_images(train, b.classes[0]))
    b.remove_class("added-51")
    b.add_class("Cafe\u0301 \u2615 \U0001f469\u200d\U0001f52c", class_images(train, train.class_names[53], 2))
    return b


def test_journal_replay_matches_python(bundle_dir, shapes_new, tmp_path):
    b = journaled(bundle_dir, shapes_new)
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["journal"]["seq"] < b.seq  # records after the snapshot point: Node must replay them
    py = Bundle.load(bundle_dir)
    js = run_node("info", bundle_dir, "--prototypes")
    assert js["classes"] == py.classes and js["counts"] == py.head.counts.tolist()
    assert "Caf\u00e9 \u2615 \U0001f469\u200d\U0001f52c" in js["classes"]  # NFC, as Python stored it
    assert js["seq"] == py.seq and js["replayed"] == py.seq - m["journal"]["seq"]
    np.testing.assert_allclose(np.array(js["prototypes"], np.float32), py.head.prototypes, rtol=0, atol=1e-6)
    # a torn append after the last record is ignored by both
    with open(bundle_dir / m["journal"]["file"], "ab") as f:
        f.write(b"ECJ1\x10\x00\x00\x00partial")
    js2 = run_node("info", bundle_dir, "--prototypes")
    assert js2["classes"] == js["classes"] and js2["prototypes"] == js["prototypes"] and js2["discarded_bytes"] == 15
    assert Bundle.load(bundle_dir).classes == py.classes


def test_damaged_files_are_refused(bundle_dir, shapes_new):
    b = journaled(bundle_dir, shapes_new)
    store.snapshot(bundle_dir)  # a manifest with every class, non-ASCII names included (its seal is checked)
    b.refresh()
    assert run_node("info", bundle_dir)["classes"] == b.classes
    manifest = bundle_dir / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good.replace('"added-50"', '"added-5O"'))
    proc = run_node("info", bundle_dir, ok=False)
    assert proc.returncode == 1 and "TamperedFileError: manifest.json" in proc.stderr
    manifest.write_text(good)
    jfile = bundle_dir / b.manifest["journal"]["file"]
    good = jfile.read_bytes()
    data = bytearray(good)
    data[60] ^= 1  # inside the first record, which later records chain from
    jfile.write_bytes(bytes(data))
    proc = run_node("info", bundle_dir, ok=False)
    assert proc.returncode == 1 and "CorruptBundleError" in proc.stderr and "journal" in proc.stderr
    jfile.write_bytes(good)
    head = bundle_dir / b.manifest["head"]["file"]
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 1
    head.write_bytes(bytes(data))
    proc = run_node("info", bundle_dir, ok=False)
    assert proc.returncode == 1 and "TamperedFileError" in proc.stderr and head.name in proc.stderr


def test_other_head_kinds_are_refused_clearly(bundle_dir):
    manifest = bundle_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    m["head"]["kind"] = "ridge"
    manifest.write_text(json.dumps(m))
    proc = run_node("info", bundle_dir, ok=False)
    assert proc.returncode == 1 and "IncompatibleBundleError" in proc.stderr and "prototype_cosine" in proc.stderr


def test_compacted_and_rolled_back_bundles_match_python(bundle_dir, shapes_new):
    """A base file from a compaction (with the folded update ids) and a rolled-back journal read as in Python."""
    b = journaled(bundle_dir, shapes_new)
    b.rollback(3)
    b.compact()
    assert b.manifest["head"]["file"].startswith("base-")
    train = shapes_new[0]
    for step in ("compacted", "added after"):
        py = Bundle.load(bundle_dir)
        js = run_node("info", bundle_dir, "--prototypes")
        assert js["classes"] == py.classes and js["counts"] == py.head.counts.tolist() and js["seq"] == py.seq, step
        np.testing.assert_array_equal(np.array(js["prototypes"], np.float32), py.head.prototypes, err_msg=step)
        b.add_class("after-compaction", class_images(train, train.class_names[60], 3))


def test_batches_replay_whole_or_not_at_all_as_in_python(bundle_dir, shapes_new):
    """A multi-record append (store.add_batch) is replayed whole; cut short, it is dropped whole by both."""
    train = shapes_new[0]
    b = Bundle.load(bundle_dir)
    b.add_class("first", class_images(train, train.class_names[70], 2))  # the journal's first record: a snapshot
    store.add_batch(bundle_dir, [(f"batch-{c}", b.embed(class_images(train, train.class_names[c], 2))) for c in (71, 72, 73)])
    jfile = bundle_dir / Bundle.load(bundle_dir).manifest["journal"]["file"]
    for cut in (0, 7):  # the whole journal, then the last record torn
        if cut:
            jfile.write_bytes(jfile.read_bytes()[:-cut])
        py = Bundle.load(bundle_dir)
        js = run_node("info", bundle_dir, "--prototypes")
        assert js["classes"] == py.classes and js["seq"] == py.seq
        np.testing.assert_array_equal(np.array(js["prototypes"], np.float32), py.head.prototypes)
        assert ("batch-71" in py.classes) == (cut == 0)
