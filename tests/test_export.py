import json

import numpy as np
import pytest

from edgecl.zoo import create_backbone
from edgecl_export import ExportError, export_learner
from edgecl.onnx_graph import export_onnx, parity
from edgecl_runtime.manifest import sha256_file
from edgecl_runtime.preprocess import preprocess


def test_bundle_layout_manifest_and_checksums(exported, trained):
    report, path = exported
    result, _ = trained
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "edgecl-bundle" and m["format_version"] == 3
    # since version 2: an id shared by every copy of this export (merge), the base of the journal, a sealed manifest
    assert m["base"] == {"id": m["bundle_id"], "file": "head-000000.safetensors", "seq": 0, "classes": m["classes"],
                         "arrays": m["head"]["arrays"]}
    assert m["journal"]["seq"] == 0 and len(m["checksum"]) == 64
    assert m["model"]["opset"] >= 17 and m["backbone"]["embedding_dim"] == 512
    assert m["model"]["inputs"] == ["images", "prototypes"] and m["model"]["outputs"] == ["features", "scores"]
    assert m["backbone"]["weights"]["source"] == "embedded:edgecl-resnet10t"  # no machine path
    assert "/" not in json.dumps(m["backbone"]["weights"])
    assert m["preprocess"]["input_size"] == [3, 32, 32] and len(m["preprocess"]["mean"]) == 3
    assert m["classes"] == result.class_names
    for name, entry in m["files"].items():
        assert sha256_file(path / name) == entry["sha256"]
    assert set(m["files"]) == {"model.onnx", "head-000000.safetensors"}
    assert report.parity_max_abs_diff <= 1e-4


def test_onnx_parity_random_and_real_inputs(trained, tmp_path):
    result, _ = trained
    spec = result.learner.backbone.spec
    module = result.learner.embedding_module()
    export_onnx(module, spec.input_size, tmp_path / "b.onnx")
    rng = np.random.default_rng(1)
    random_in = rng.standard_normal((5, *spec.input_size)).astype(np.float32)
    real_in = preprocess(result.test.images[:17], spec.input_size, spec.mean, spec.std)  # odd batch: dynamic axis
    assert parity(module, tmp_path / "b.onnx", [random_in]) <= 1e-4
    assert parity(module, tmp_path / "b.onnx", [real_in]) <= 1e-4


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_vit_exports_with_both_exporters(tmp_path, exporter):
    bb = create_backbone("vit_tiny_patch16_224", weights="random", img_size=32)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    export_onnx(bb, bb.spec.input_size, tmp_path / "v.onnx", exporter=exporter)
    assert parity(bb, tmp_path / "v.onnx", [x]) <= 1e-4


def test_export_refuses_non_empty_dir_and_bad_opset(trained, tmp_path):
    result, _ = trained
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_learner(result.learner, result.class_names, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="opset"):
        export_learner(result.learner, result.class_names, tmp_path / "o2", opset=13)
    assert not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dirs cleaned


def test_parity_failure_is_reported(trained, tmp_path, monkeypatch):
    import edgecl_export.bundle as eb

    result, _ = trained
    monkeypatch.setattr(eb, "parity", lambda *a, **k: 0.5)
    with pytest.raises(ExportError, match="parity failed"):
        export_learner(result.learner, result.class_names, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_class_names_must_match(trained, tmp_path):
    result, _ = trained
    with pytest.raises(ExportError, match="distinct class names"):
        export_learner(result.learner, result.class_names[:-1], tmp_path / "o")


def test_staged_directory_keeps_the_old_bundle_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    from pathlib import Path

    from edgecl_export.bundle import staged_directory

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with staged_directory(out) as tmp:  # a replacement that lands
        (tmp / "manifest.json").write_text("new")
    assert (out / "manifest.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    real_rename, staged = Path.rename, []

    def failing_rename(self, target):
        if staged and self == staged[0]:  # the new bundle cannot be moved in (e.g. interrupted)
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        with staged_directory(out) as tmp:
            (tmp / "manifest.json").write_text("newer")
            staged.append(tmp)
    assert (out / "manifest.json").read_text() == "new"  # the old bundle is back in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left beside it
