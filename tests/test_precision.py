"""fp16 / INT8 bundles: they export, run, agree with fp32, and the manifest says what they are."""

import json

import numpy as np

from edgecl_runtime import tensors
import pytest
from click.testing import CliRunner

from edgecl.workflows import ExportError, export_run, run_precision_data
from edgecl_export import quantize as q
from edgecl_runtime import Bundle


@pytest.fixture(scope="module")
def bundles(trained, exported, tmp_path_factory):
    """fp32 (the session bundle), int8 static, int8 dynamic and fp16 exports of the same run."""
    _, run_dir = trained
    root = tmp_path_factory.mktemp("precision")
    out = {"fp32": exported[1]}
    for name, precision, opts in [
        ("int8", "int8", {"calibration_size": 64}),
        ("int8-dynamic", "int8", {"calibration_size": 0}),
        ("fp16", "fp16", {}),
    ]:
        out[name] = export_run(run_dir, root / name, precision=precision, precision_options=opts).path
    return out


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_each_precision_exports_and_runs(bundles, shapes_new):
    _, test = shapes_new
    x = test.images[:16]
    for name, path in bundles.items():
        m = _manifest(path)
        b = Bundle.load(path, device="cpu", cache=False)
        assert m["backbone"]["precision"] == name.split("-")[0]
        assert b.predict(x).indices.shape == (16,)
    sizes = {k: (p / "model.onnx").stat().st_size for k, p in bundles.items()}
    assert sizes["int8"] < 0.35 * sizes["fp32"]  # int8 weights: ~4x smaller
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_int8_agrees_with_fp32_on_real_images(bundles, trained):
    result, _ = trained
    seen = result.test  # 300 fresh images of the 30 trained classes
    fp32 = Bundle.load(bundles["fp32"], device="cpu", cache=False)
    int8 = Bundle.load(bundles["int8"], device="cpu", cache=False)
    a, b = fp32.predict(seen.images), int8.predict(seen.images)
    agreement = np.mean(a.indices == b.indices)
    acc32 = np.mean(np.array(a.labels) == np.array(result.class_names)[seen.labels])
    acc8 = np.mean(np.array(b.labels) == np.array(result.class_names)[seen.labels])
    assert agreement >= 0.95
    assert acc8 >= acc32 - 0.03 and acc8 > 0.5  # chance is 3 %
    e32, e8 = fp32.embed(seen.images[:64]), int8.embed(seen.images[:64])
    cos = np.sum(e32 * e8, 1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
    assert cos.mean() > 0.98


def test_fp16_embeddings_match_fp32(bundles, shapes_new):
    _, test = shapes_new
    e32 = Bundle.load(bundles["fp32"], device="cpu", cache=False).embed(test.images[:32])
    e16 = Bundle.load(bundles["fp16"], device="cpu", cache=False).embed(test.images[:32])
    assert e16.dtype == np.float32
    cos = np.sum(e32 * e16, 1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e16, axis=1)
    assert cos.min() > 0.999


def test_manifest_records_precision_and_calibration_hash(bundles, trained):
    _, run_dir = trained
    m = _manifest(bundles["int8"])
    p = m["precision"]
    assert p["backbone"] == "int8" and p["head"] == "fp32"
    assert p["conversion"]["method"] == "static" and p["conversion"]["format"] == "QDQ"
    assert p["conversion"]["per_channel"] and p["conversion"]["quantized_nodes"] > 10
    assert p["conversion"]["calibrate_method"] == "percentile" and p["conversion"]["percentile"] == q.CALIBRATION_PERCENTILE
    assert p["conversion"]["fp32_leading_convs"] == q.FP32_LEADING_CONVS and p["conversion"]["fp32_nodes"]
    run = json.loads((run_dir / "run.json").read_text())
    cal, _, _, _ = run_precision_data(run["config"], run["class_names"], (32, 32), 64)
    assert p["calibration"] == {"sha256": q.calibration_sha256(cal), "images": 64, "source": p["calibration"]["source"]}
    assert q.calibration_sha256(cal[::-1]) != p["calibration"]["sha256"]  # order and content are part of the identity
    assert p["check"]["images"] > 100 and p["check"]["top1_agreement"] >= 0.95 and p["diverged"] is None
    dyn = _manifest(bundles["int8-dynamic"])["precision"]
    assert dyn["conversion"]["method"] == "dynamic" and "calibration" not in dyn
    assert _manifest(bundles["fp32"])["backbone"]["precision"] == "fp32"
    fp16 = _manifest(bundles["fp16"])["precision"]
    assert fp16["conversion"]["keep_fp32_ops"] == ["LayerNormalization", "Softmax", "ReduceMean"]


def test_fp16_keeps_normalisation_ops_in_fp32(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    scale = helper.make_tensor("s", TensorProto.FLOAT, [4], np.ones(4, np.float32))
    nodes = [helper.make_node("MatMul", ["images", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "s"], ["embeddings"], axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, scale]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    q.convert_fp16(tmp_path / "m.onnx", tmp_path / "h.onnx")
    g = onnx.load(tmp_path / "h.onnx").graph
    inits = {i.name: i.data_type for i in g.initializer}
    assert inits["s"] == TensorProto.FLOAT  # LayerNorm's parameters stay fp32
    assert TensorProto.FLOAT16 in inits.values()  # the MatMul weight went fp16
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O


def test_divergent_conversion_is_refused_unless_allowed(trained, tmp_path, monkeypatch):
    _, run_dir = trained
    monkeypatch.setattr(q, "compare", lambda *a, **k: {"images": 8, "cosine_mean": 0.5, "cosine_min": 0.1})
    with pytest.raises(ExportError, match="diverges from fp32.*cosine"):
        export_run(run_dir, tmp_path / "bad", precision="fp16")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    rep = export_run(run_dir, tmp_path / "forced", precision="fp16", precision_options={"allow_divergence": True})
    assert "cosine" in _manifest(rep.path)["precision"]["diverged"]


def test_check_divergence_thresholds():
    assert q.check_divergence({"cosine_mean": 0.999, "top1_agreement": 0.99}) is None
    assert "agreement" in q.check_divergence({"cosine_mean": 0.999, "top1_agreement": 0.5})
    assert "NaN" in q.check_divergence({"non_finite": True, "cosine_mean": 0.0})


def test_head_stays_fp32_unless_asked(bundles, trained, tmp_path, shapes_new):
    _, run_dir = trained
    z = tensors.read(bundles["int8"] / _manifest(bundles["int8"])["head"]["file"])
    assert all(a.dtype != np.float16 for a in z.values())
    rep = export_run(run_dir, tmp_path / "h16", precision="fp32", precision_options={"head_precision": "fp16"})
    m = _manifest(rep.path)
    assert tensors.read(rep.path / m["head"]["file"])["prototypes"].dtype == np.float16
    assert m["precision"]["head"] == "fp16"
    x = shapes_new[1].images[:50]
    ref = Bundle.load(bundles["fp32"], device="cpu", cache=False).predict(x).indices
    assert np.mean(Bundle.load(rep.path, device="cpu", cache=False).predict(x).indices == ref) >= 0.98
    with pytest.raises(ExportError, match="head precision"):
        q.PrecisionSpec("fp32", head_precision="int4")
    with pytest.raises(ExportError, match="precision must be"):
        q.PrecisionSpec("int4")


def test_cli_export_precision_reports_the_check(trained, tmp_path):
    from edgecl.cli import main

    _, run_dir = trained
    res = CliRunner().invoke(main, ["export", str(run_dir), str(tmp_path / "b"), "--precision", "int8",
                                    "--calibration-size", "32"])
    assert res.exit_code == 0, res.output
    assert "int8 backbone (static)" in res.output and "top-1 agreement" in res.output
    assert _manifest(tmp_path / "b")["precision"]["calibration"]["images"] == 32



def _conv_chain(tmp_path, n_convs, tail=("GlobalAveragePool",)):
    """images -> n_convs x (Conv 1x1 + Relu) -> tail ops; returns the saved path."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits, x = [], [], "images"
    for i in range(n_convs):
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [3, 3, 1, 1], np.eye(3, dtype=np.float32).ravel()))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    for j, op in enumerate(tail):
        nodes.append(helper.make_node(op, [x], [f"t{j}"], name=f"tail{j}"))
        x = f"t{j}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    path = tmp_path / f"c{n_convs}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_leading_convs_stay_fp32_from_the_graph_structure(tmp_path):
    # the first two convs and their activations, not the third conv
    assert q.leading_conv_nodes(_conv_chain(tmp_path, 4), 2) == ["conv0", "relu0", "conv1", "relu1"]
    # a single conv (a ViT's patch embedding): that conv only, never what follows it
    assert q.leading_conv_nodes(_conv_chain(tmp_path, 1), 2) == ["conv0"]
    assert q.leading_conv_nodes(_conv_chain(tmp_path, 0), 2) == []
    assert q.leading_conv_nodes(_conv_chain(tmp_path, 4), 0) == []


def test_calibration_reader_reads_in_ranges():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    r = q._Batches(x, batch_size=16)
    assert len(r) == 3
    assert [len(b[q.INPUT_NAME]) for b in iter(r.get_next, None)] == [16, 16, 8]
    r.set_range(1, 2)
    assert r.get_next()[q.INPUT_NAME][0, 0, 0, 0] == 16 and r.get_next() is None
