"""Adding a class by its name on the device: SimpleCIL on edgecl-clip-tiny exported with text.onnx, the runtime
(no torch) turns a name into a prototype, journaled like any update."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecl_runtime import Bundle, IncompatibleBundleError, InvalidInputError
from tests.conftest import ROOT

KNOWN, NEW = 15, 5  # glyphs:20: classes in the export, classes added on the device by name


@pytest.fixture(scope="module")
def glyphs20():
    from edgecl.data import load_dataset

    return load_dataset("glyphs:20")


@pytest.fixture(scope="module")
def clip_bundle(glyphs20, tmp_path_factory):
    from edgecl.data import BatchLoader
    from edgecl.learners import create_learner
    from edgecl.zoo import create_backbone
    from edgecl_export import export_learner

    train, _ = glyphs20
    learner = create_learner("simplecil", create_backbone("edgecl-clip-tiny"))
    spec = learner.backbone.spec
    learner.fit_task(BatchLoader(train.select_classes(range(KNOWN)), spec.input_size, spec.mean, spec.std))
    out = tmp_path_factory.mktemp("clip") / "bundle"
    export_learner(learner, train.class_names[:KNOWN], out)
    return out, learner


@pytest.fixture
def bundle_copy(clip_bundle, tmp_path):
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(clip_bundle[0], dst)
    return dst


def _texts(ds):
    from edgecl.clip.zeroshot import class_text

    return [class_text(n) for n in ds.class_names]


def test_export_writes_the_text_tower_with_parity(clip_bundle):
    path, _ = clip_bundle
    m = json.loads((path / "manifest.json").read_text())
    t = m["text"]
    assert t["file"] == "text.onnx" and "text.onnx" in m["files"] and t["parity_max_abs_diff"] <= 1e-4
    assert t["tokenizer"]["kind"] == "edgecl-bytes" and t["tokenizer"]["context_length"] == 64
    assert t["outputs"] == ["text_embedding", "text_prototype"] and t["prototype_map"] is True
    assert m["backbone"]["name"] == "edgecl-clip-tiny" and m["backbone"]["embedding_dim"] == 192


def test_text_prototypes_match_torch(clip_bundle, glyphs20):
    path, learner = clip_bundle
    names = _texts(glyphs20[0])
    ref = learner.backbone.clip.text_prototypes(names).numpy()
    got = Bundle.load(path, device="cpu").text_prototypes(names)
    assert np.max(np.abs(got - ref)) <= 1e-4 * max(1.0, np.abs(ref).max())


def test_add_by_name_without_torch_predicts_the_new_classes(bundle_copy, glyphs20):
    _, test = glyphs20
    new = range(KNOWN, KNOWN + NEW)
    idx = test.class_indices(new)
    np.save(bundle_copy.parent / "x.npy", test.images[idx])
    code = (
        "import json, sys, numpy as np\n"
        "from edgecl_runtime import Bundle\n"
        f"b = Bundle.load({str(bundle_copy)!r}, device='cpu')\n"
        f"for name, text in {[(test.class_names[c], _texts(test)[c]) for c in new]!r}:\n"
        "    r = b.add_class(name, text=text)\n"
        "    assert r.created and r.examples_added == 1\n"
        f"p = b.predict(np.load({str(bundle_copy.parent / 'x.npy')!r}))\n"
        "bad = [m for m in ('torch', 'timm', 'torchvision', 'open_clip', 'edgecl') if m in sys.modules]\n"
        "print(json.dumps({'labels': p.labels, 'bad': bad, 'classes': b.classes}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["bad"] == [] and len(res["classes"]) == KNOWN + NEW
    truth = [test.class_names[c] for c in test.labels[idx]]
    acc = np.mean([a == b for a, b in zip(res["labels"], truth)])
    assert acc > 2 / (KNOWN + NEW)  # the images of classes known only by name: well above chance (1/20)


def test_by_name_updates_are_journaled_and_roll_back(bundle_copy, glyphs20):
    train, test = glyphs20
    b = Bundle.load(bundle_copy, device="cpu")
    before = b.scores(test.images[:8])
    name = train.class_names[KNOWN]
    b.add_class(name, text=_texts(train)[KNOWN])
    b.add_class(train.class_names[KNOWN + 1], train.images[train.labels == KNOWN + 1][:3], text=True)
    h = b.history()
    assert [u["class"] for u in h["updates"]][-2:] == [name, train.class_names[KNOWN + 1]]
    assert int(b.head.counts[-1]) == 4  # 3 images + the name's prototype
    b.rollback(0)
    assert b.classes == train.class_names[:KNOWN]
    np.testing.assert_array_equal(b.scores(test.images[:8]), before)
    again = Bundle.load(bundle_copy, device="cpu")  # the journal replays to the same state
    assert again.classes == b.classes


def test_bundle_without_text_tower_refuses_by_name_and_is_unchanged(exported, tmp_path):
    import shutil

    dst = tmp_path / "plain"
    shutil.copytree(exported[1], dst)
    before = {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()}
    b = Bundle.load(dst, device="cpu")
    with pytest.raises(IncompatibleBundleError, match="no text tower"):
        b.add_class("mug", text=True)
    with pytest.raises(InvalidInputError, match="needs images, text"):
        b.add_class("mug")
    assert {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()} == before


def test_cli_add_class_by_name(bundle_copy, glyphs20):
    train, _ = glyphs20
    cmd = [sys.executable, "-m", "edgecl_runtime.cli", "add-class", str(bundle_copy), train.class_names[KNOWN],
           "--text", _texts(train)[KNOWN], "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["created"] and res["examples_added"] == 1 and res["by_text"] == _texts(train)[KNOWN]
    bad = subprocess.run(cmd[:5], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "IMAGES, --by-name" in bad.stderr
