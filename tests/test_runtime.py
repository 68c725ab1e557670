import json
import subprocess
import sys

import numpy as np
import pytest

from edgecl_runtime import tensors
from edgecl_runtime import (
    Bundle,
    CorruptBundleError,
    DeviceUnavailableError,
    IncompatibleBundleError,
    InvalidInputError,
    MissingFileError,
)
from tests.conftest import ROOT, class_images


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_runtime_never_imports_torch(exported):
    code = (
        "import sys, numpy as np\n"
        "from edgecl_runtime import Bundle\n"
        f"b = Bundle.load({str(exported[1])!r})\n"
        "b.predict(np.zeros((2, 32, 32, 3), np.uint8))\n"
        "bad = [m for m in ('torch', 'timm', 'torchvision', 'edgecl') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(b.device)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("cpu", "cuda")


def test_runtime_agrees_with_torch_learner(exported, trained):
    result, _ = trained
    b = Bundle.load(exported[1], device="cpu")
    assert b.device == "cpu" and b.providers == ["CPUExecutionProvider"]
    from edgecl.experiment import evaluate

    torch_pred = evaluate(result.learner, result.test, result.learner.backbone.spec)
    onnx_pred = b.predict(result.test.images).indices
    assert np.mean(torch_pred == onnx_pred) >= 0.99
    acc = np.mean(onnx_pred == result.test.labels)
    assert acc > 0.8
    p = b.predict(result.test.images[:3], top_k=4)
    assert len(p.top_k) == 3 and len(p.top_k[0]) == 4 and p.top_k[0][0][0] == p.labels[0]


def test_cuda_request_without_cuda_is_a_clear_error(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert Bundle.load(exported[1], device="cuda").device == "cuda"
    else:
        with pytest.raises(DeviceUnavailableError, match="onnxruntime-gpu"):
            Bundle.load(exported[1], device="cuda")
        assert Bundle.load(exported[1], device="auto").device == "cpu"
    with pytest.raises(InvalidInputError, match="device"):
        Bundle.load(exported[1], device="tpu")


def test_add_class_round_trip(bundle_dir, shapes_new):
    train, test = shapes_new
    b = Bundle.load(bundle_dir)
    new = "white-star"
    assert new not in b.classes
    queries = class_images(test, new)
    before = b.predict(queries).labels
    assert new not in before
    res = b.add_class(new, class_images(train, new, 5))
    assert res.created and res.examples_added == 5 and res.num_classes == 31
    after = b.predict(queries).labels
    assert np.mean(np.array(after) == new) >= 0.8  # predictions changed to the new class
    reloaded = Bundle.load(bundle_dir)  # persisted, checksums valid
    assert reloaded.classes[-1] == new
    assert np.mean(np.array(reloaded.predict(queries).labels) == new) >= 0.8
    m = json.loads((bundle_dir / "manifest.json").read_text())
    # the export's head stays as the base of the journal; the update is journal record 1
    assert m["head"]["file"] == "head-000001.safetensors" and m["base"]["file"] == "head-000000.safetensors"
    assert sorted(m["files"]) == ["head-000000.safetensors", "head-000001.safetensors", "model.onnx"]
    assert m["journal"]["seq"] == 1 and reloaded.history()["updates"][-1]["class"] == new


def test_adding_existing_name_extends_with_running_mean(bundle_dir, shapes_new):
    train, _ = shapes_new
    b = Bundle.load(bundle_dir)
    name = b.classes[0]
    count0, proto0 = b.head.counts[0], b.head.prototypes[0].astype(np.float64)
    ex = class_images(train, name, 4)
    res = b.add_class(name, ex)
    assert not res.created and res.num_classes == 30 and res.total_examples == count0 + 4
    emb = b.embed(ex).astype(np.float64)
    expected = (proto0 * count0 + emb.sum(0)) / (count0 + 4)
    np.testing.assert_allclose(Bundle.load(bundle_dir).head.prototypes[0], expected, rtol=1e-5, atol=1e-6)
    assert len(Bundle.load(bundle_dir).classes) == 30


@pytest.mark.parametrize(
    "name, images, msg",
    [
        ("x", np.zeros((0, 32, 32, 3), np.uint8), "empty"),
        ("x", [], "empty"),
        ("x", np.zeros((2, 32, 32, 3), np.int16), "dtype"),
        ("x", np.zeros((2, 3, 32, 32), np.uint8), "channels-last"),
        ("x", np.full((1, 32, 32, 3), 7.0, np.float32), r"\[0, 1\]"),
        ("", np.zeros((1, 32, 32, 3), np.uint8), "non-empty"),
        (" x", np.zeros((1, 32, 32, 3), np.uint8), "whitespace"),
    ],
)
def test_bad_add_class_input_changes_nothing(bundle_dir, name, images, msg):
    b = Bundle.load(bundle_dir)
    snap = _snapshot(bundle_dir)
    with pytest.raises(InvalidInputError, match=msg):
        b.add_class(name, images)
    assert _snapshot(bundle_dir) == snap
    assert len(b.classes) == 30


def test_corrupt_backbone_rejected(bundle_dir):
    p = bundle_dir / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptBundleError, match="sha256"):
        Bundle.load(bundle_dir)


def test_tampered_head_and_truncation_rejected(bundle_dir):
    head = bundle_dir / "head-000000.safetensors"
    arrays = {k: np.array(v) for k, v in tensors.parse(head.read_bytes(), "head")[0].items()}
    arrays["prototypes"][0] += 1.0
    head.write_bytes(tensors.to_bytes(arrays))
    with pytest.raises(CorruptBundleError):
        Bundle.load(bundle_dir)
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(CorruptBundleError, match="truncated"):
        Bundle.load(bundle_dir)


def test_unverified_load_still_catches_unreadable_head(bundle_dir):
    (bundle_dir / "head-000000.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptBundleError, match="cannot read head"):
        Bundle.load(bundle_dir, verify=False)


def test_manifest_problems(bundle_dir, tmp_path):
    mpath = bundle_dir / "manifest.json"
    good = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(IncompatibleBundleError, match="upgrade"):
        Bundle.load(bundle_dir)
    mpath.write_text("{ not json")
    with pytest.raises(CorruptBundleError, match="JSON"):
        Bundle.load(bundle_dir)
    mpath.write_text(json.dumps({k: v for k, v in good.items() if k != "head"}))
    with pytest.raises(CorruptBundleError, match="head"):
        Bundle.load(bundle_dir)
    mpath.write_text(json.dumps(good))
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(MissingFileError, match="model.onnx"):
        Bundle.load(bundle_dir)
    with pytest.raises(MissingFileError, match="not found"):
        Bundle.load(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="manifest.json"):
        Bundle.load(tmp_path)
