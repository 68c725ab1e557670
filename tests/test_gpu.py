"""The GPU path (issue 31): CUDA inference (`edgecl-runtime[gpu]`), IO binding, fp16 bundles, training on CUDA.

Tests marked ``gpu`` run only where CUDA is there and are skipped, with the reason, elsewhere: the
inference ones need onnxruntime's ``CUDAExecutionProvider`` able to start a session, the training ones
a CUDA build of torch with a GPU (``torch.cuda.is_available()``). ``benchmarks/gpu_check.sh`` runs them
with ``edgecl bench --device cuda`` and writes one report (docs/gpu.md). They were written against the
APIs on a machine without a GPU and have not run on CUDA there; the unmarked tests at the end run
everywhere (the check script's guards, the IO-binding helper on the CPU).

Tolerances. fp32 on the CPU is the reference. On Ampere and later GPUs onnxruntime's CUDA provider
(``use_tf32``, on by default) and torch's cuDNN convolutions (``torch.backends.cudnn.allow_tf32``, on
by default) multiply fp32 tensors in TF32: 10 mantissa bits, like fp16, with fp32 accumulation. So:

* a session with ``use_tf32=0`` must give the CPU's scores to ``FP32_ATOL`` = 1e-4 (fp32 arithmetic,
  other summation order only);
* the runtime's own CUDA session (onnxruntime's defaults), an fp16 bundle and torch on CUDA are held
  to ``REDUCED_ATOL`` = 1e-2 on the scores, which are cosines of unit vectors (|score| <= 1), so an
  error in the scores is at most twice the relative error of the embedding. fp16/TF32 round to a unit
  roundoff of 2**-11 = 4.9e-4; over the ~10 convolutions of the default backbone that grew, in a CPU
  simulation of the whole backbone in fp16 (torch ``.half()`` on the 300 test images of the session
  run), to a relative embedding error of 2.6e-3 and a score error of at most 9.7e-4 (mean 1.2e-4).
  1e-2 leaves x10 for GPU kernels that keep fp16 partial sums, and is still far below what a broken
  path gives (a wrong cast or a mis-bound input moves scores by 0.1 and more). Top-1 can change only
  where the fp32 margin between the two best classes is below twice the score error: 0 of the 300
  test images have a margin below 3.3e-3 (the simulation agreed on all), 7 below 1e-2; hence top-1
  agreement >= 0.99 (3 flips), not 1.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, class_images

CUDA_EP = "CUDAExecutionProvider"
FP32_ATOL = 1e-4
REDUCED_ATOL = 1e-2  # TF32 / fp16 scores, see the module doc
MIN_AGREEMENT = 0.99
NEW_CLASS = "white-star"  # a shapes class the session run (its first 30) has not seen
CHECK_SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


# ----------------------------------------------------------------------------- what this machine has
def ort_cuda_problem() -> str | None:
    """Why onnxruntime cannot run on CUDA here, or None when a session starts on its CUDA provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA_EP not in available:
        return (f"onnxruntime {ort.__version__} offers {available}, no {CUDA_EP}: install "
                "'edgecl-runtime[gpu]' (onnxruntime-gpu) in place of [cpu], with a matching CUDA and cuDNN")
    from onnx import TensorProto, helper  # listed: can a session start and run on it (driver, libraries)?

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the runtime accepts (>= 1.17)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA_EP, "CPUExecutionProvider"])
        session.run(None, {"x": np.ones(2, np.float32)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        return f"onnxruntime lists {CUDA_EP} but a session cannot run on it: {exc}"
    if session.get_providers()[0] != CUDA_EP:
        return f"onnxruntime lists {CUDA_EP} but fell back to {session.get_providers()} (CUDA/cuDNN libraries missing?)"
    return None


def torch_cuda_problem() -> str | None:
    """Why torch cannot train on CUDA here, or None."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build: training on CUDA needs a CUDA build of torch"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False (no GPU or driver)"
    return None


ORT_PROBLEM = ort_cuda_problem()
TORCH_PROBLEM = torch_cuda_problem()


def gpu_test(*problems: str | None):
    """Mark ``gpu`` and skip, with the reason, when any of ``problems`` is set."""
    def mark(test):
        for problem in problems:
            test = pytest.mark.skipif(problem is not None, reason=f"no CUDA: {problem}")(test)
        return pytest.mark.gpu(test)
    return mark


# ----------------------------------------------------------------------------------------- helpers
def run_bound(session, feeds: dict[str, np.ndarray], device: str = "cuda", device_id: int = 0):
    """``session`` run with every input copied to ``device`` first and every output bound there
    (onnxruntime IO binding): ``(devices the outputs live on, {output name: copy on the host})``."""
    import onnxruntime as ort

    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device, device_id) for v in feeds.values()]
    for name, value in zip(feeds, values):
        assert value.device_name() == device
        binding.bind_ortvalue_input(name, value)
    names = [o.name for o in session.get_outputs()]
    for name in names:
        binding.bind_output(name, device, device_id)
    session.run_with_iobinding(binding)
    devices = [v.device_name() for v in binding.get_outputs()]
    return devices, dict(zip(names, binding.copy_outputs_to_cpu()))


def fp32_cuda_session(bundle):
    """A session of ``bundle``'s ONNX file on CUDA with TF32 off (``use_tf32=0``): fp32 arithmetic."""
    import onnxruntime as ort

    from edgecl_runtime.manifest import onnx_file
    from edgecl_runtime.session import session_options

    try:
        session = ort.InferenceSession(str(bundle.path / onnx_file(bundle.manifest)), sess_options=session_options(),
                                       providers=[(CUDA_EP, {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        if "use_tf32" in str(exc):
            pytest.skip(f"onnxruntime {ort.__version__} has no use_tf32 option of the CUDA provider (>= 1.18): {exc}")
        raise
    assert session.get_providers()[0] == CUDA_EP
    assert session.get_provider_options()[CUDA_EP]["use_tf32"] == "0"
    return session


def feeds_of(bundle, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX inputs of ``bundle`` for ``images``: preprocessed images and, for a single-file bundle, the head's state."""
    from edgecl_runtime.manifest import single_file

    x = bundle.preprocess(images)
    return {bundle.session.get_inputs()[0].name: x, **(bundle.head.graph_inputs() if single_file(bundle.manifest) else {})}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --------------------------------------------------------------------------------- CUDA inference
@gpu_test(ORT_PROBLEM)
def test_bundle_on_cuda_predicts_like_cpu(bundle_dir, trained, record_property):
    """device="cuda" runs on CUDA through the runtime's IO-binding path, caches its optimised graph, and scores
    like the CPU (TF32 tolerance: onnxruntime's defaults, as a device runs them)."""
    from edgecl_runtime import Bundle

    result, _ = trained
    images = result.test.images
    cpu = Bundle.load(bundle_dir, device="cpu", cache=False)
    gpu = Bundle.load(bundle_dir, device="cuda")
    assert gpu.device == "cuda" and gpu.providers[0] == CUDA_EP and gpu.session_source == "built"
    assert gpu._run.io_binding  # the runtime binds its outputs on CUDA (edgecl_runtime.session.Runner)
    s_cpu, s_gpu = cpu.scores(images), gpu.scores(images)
    diff = float(np.abs(s_gpu - s_cpu).max())
    agreement = float(np.mean(s_gpu.argmax(1) == s_cpu.argmax(1)))
    record_property("max_abs_score_diff_vs_cpu", diff)
    record_property("top1_agreement_vs_cpu", agreement)
    assert diff <= REDUCED_ATOL and agreement >= MIN_AGREEMENT
    again = Bundle.load(bundle_dir, device="cuda")  # the optimised CUDA graph from .ort-cache
    assert again.session_source == "cached" and again.device == "cuda"
    np.testing.assert_allclose(again.scores(images), s_gpu, atol=1e-5)
    np.testing.assert_array_equal(gpu.predict(images).indices, s_gpu.argmax(1))


@gpu_test(ORT_PROBLEM)
def test_fp32_on_cuda_equals_cpu_without_tf32(exported, trained, record_property):
    """The bundle's graph in fp32 arithmetic on CUDA (use_tf32=0) gives the CPU's scores to 1e-4."""
    from edgecl_runtime import Bundle

    result, _ = trained
    cpu = Bundle.load(exported[1], device="cpu", cache=False)
    session = fp32_cuda_session(cpu)
    feeds = feeds_of(cpu, result.test.images[:128])
    ref = dict(zip([o.name for o in cpu.session.get_outputs()], cpu.session.run(None, feeds)))
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    diff = float(np.abs(got["scores"] - ref["scores"]).max())
    record_property("max_abs_score_diff_vs_cpu", diff)
    assert diff <= FP32_ATOL
    np.testing.assert_allclose(got["features"], ref["features"], rtol=1e-4, atol=1e-4 * float(np.abs(ref["features"]).max()))


@gpu_test(ORT_PROBLEM)
def test_io_binding_on_gpu_gives_cpu_outputs(exported, trained, record_property):
    """Inputs copied to the GPU as OrtValues, outputs bound there: the CPU's outputs (fp32 session to 1e-4;
    the runtime's own session to its unbound run)."""
    from edgecl_runtime import Bundle

    result, _ = trained
    cpu = Bundle.load(exported[1], device="cpu", cache=False)
    feeds = feeds_of(cpu, result.test.images[:64])
    ref = dict(zip([o.name for o in cpu.session.get_outputs()], cpu.session.run(None, feeds)))
    devices, got = run_bound(fp32_cuda_session(cpu), feeds)
    assert devices == ["cuda"] * len(ref)  # the outputs stayed on the GPU until copied
    diff = float(np.abs(got["scores"] - ref["scores"]).max())
    record_property("max_abs_score_diff_vs_cpu", diff)
    assert diff <= FP32_ATOL
    np.testing.assert_allclose(got["features"], ref["features"], rtol=1e-4, atol=1e-4 * float(np.abs(ref["features"]).max()))
    gpu = Bundle.load(exported[1], device="cuda", cache=False)  # onnxruntime's defaults (TF32 where the GPU has it)
    devices, bound = run_bound(gpu.session, feeds)
    plain = dict(zip([o.name for o in gpu.session.get_outputs()], gpu.session.run(None, feeds)))
    assert devices == ["cuda"] * len(plain)
    for name in plain:
        np.testing.assert_allclose(bound[name], plain[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- fp16 bundles
@gpu_test(ORT_PROBLEM)
def test_fp16_bundle_on_cuda_agrees_with_fp32(trained, exported, shapes_new, tmp_path, record_property):
    """An fp16 export (`edgecl export --precision fp16`) runs in fp16 on CUDA (the export's own check ran it
    on the CPU, which computes its fp16 nodes in fp32), agrees with fp32 and learns a class on the device."""
    import onnx

    from edgecl.workflows import export_run
    from edgecl_runtime import Bundle

    result, run_dir = trained
    path = export_run(run_dir, tmp_path / "fp16", precision="fp16").path
    graph = onnx.load(str(path / "model.onnx")).graph
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer) > 10  # really an fp16 graph
    fp32 = Bundle.load(exported[1], device="cpu", cache=False)
    fp16 = Bundle.load(path, device="cuda")
    assert fp16.device == "cuda" and fp16.manifest["backbone"]["precision"] == "fp16"
    images, labels = result.test.images, result.test.labels
    s32, s16 = fp32.scores(images), fp16.scores(images)
    assert np.all(np.isfinite(s16))
    diff = float(np.abs(s16 - s32).max())
    agreement = float(np.mean(s16.argmax(1) == s32.argmax(1)))
    cos = float(cosines(fp32.embed(images[:64]), fp16.embed(images[:64])).min())
    acc32, acc16 = float(np.mean(s32.argmax(1) == labels)), float(np.mean(s16.argmax(1) == labels))
    for name, value in [("max_abs_score_diff_vs_fp32_cpu", diff), ("top1_agreement_vs_fp32", agreement),
                        ("embedding_cosine_min", cos), ("top1_fp32_cpu", acc32), ("top1_fp16_cuda", acc16)]:
        record_property(name, value)
    assert diff <= REDUCED_ATOL and agreement >= MIN_AGREEMENT and cos >= 0.999
    assert acc16 >= acc32 - 0.01
    train, test = shapes_new
    res = fp16.add_class(NEW_CLASS, class_images(train, NEW_CLASS, 5))
    assert res.created and res.num_classes == len(result.class_names) + 1
    assert np.mean(np.array(fp16.predict(class_images(test, NEW_CLASS)).labels) == NEW_CLASS) >= 0.8


# -------------------------------------------------------------------------------- training on CUDA
@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """The session run (SimpleCIL, shapes:30, B10-Inc10) trained on CUDA, without the embedding cache (which
    is not keyed by device: it would hand back the CPU run's embeddings)."""
    from edgecl.experiment import RunConfig, run_experiment

    run_dir = tmp_path_factory.mktemp("cuda-run") / "run"
    result = run_experiment(RunConfig(dataset="shapes:30", device="cuda", embedding_cache=False), out_dir=run_dir,
                            log=lambda s: None)
    return result, run_dir


@gpu_test(TORCH_PROBLEM)
def test_training_on_cuda_matches_cpu_and_adds_a_class(cuda_run, trained, shapes_new, record_property):
    """SimpleCIL trained on CUDA: the CPU run's accuracy and prototypes (TF32 tolerance), a run directory that
    loads on the CPU, and a class added afterwards from examples embedded on the GPU."""
    import torch

    from edgecl.rundir import load_run

    (gpu, gpu_dir), (cpu, cpu_dir) = cuda_run, trained
    learner = gpu.learner
    assert learner.device == "cuda" and next(learner.backbone.parameters()).device.type == "cuda"
    assert gpu.class_names == cpu.class_names
    record_property("last_cuda", gpu.metrics.last)
    record_property("last_cpu", cpu.metrics.last)
    # 1 point = 3 of the 300 test images: predictions may differ only at near-ties (module doc)
    assert abs(gpu.metrics.last - cpu.metrics.last) <= 1.0
    assert np.allclose(gpu.metrics.overall, cpu.metrics.overall, atol=1.0)
    cos = cosines(learner.head.prototypes, cpu.learner.head.prototypes)
    record_property("prototype_cosine_min", float(cos.min()))
    assert cos.min() >= 0.9999
    np.testing.assert_array_equal(learner.head.counts, cpu.learner.head.counts)
    _, reloaded = load_run(gpu_dir)  # saved from CUDA tensors, loads on the CPU
    np.testing.assert_array_equal(reloaded.head.prototypes, learner.head.prototypes)

    train, test = shapes_new
    spec = learner.backbone.spec
    from edgecl_runtime.preprocess import preprocess

    def add(lrn):
        x = torch.from_numpy(preprocess(class_images(train, NEW_CLASS, 5), spec.input_size, spec.mean, spec.std))
        feats, labels = lrn.embed([(x, torch.full((len(x),), lrn.num_classes))])
        assert lrn.add_examples(feats, labels) == [len(cpu.class_names)]
        q = torch.from_numpy(preprocess(class_images(test, NEW_CLASS), spec.input_size, spec.mean, spec.std))
        return lrn.predict(q).numpy()

    pred = add(learner)
    assert learner.num_classes == len(cpu.class_names) + 1
    assert np.mean(pred == len(cpu.class_names)) >= 0.8
    _, on_cpu = load_run(cpu_dir)  # a private copy of the CPU learner (the session's stays untouched)
    add(on_cpu)
    assert cosines(learner.head.prototypes[-1:], on_cpu.head.prototypes[-1:])[0] >= 0.9999


@gpu_test(TORCH_PROBLEM, ORT_PROBLEM)
def test_cuda_trained_run_exports_and_adds_a_class_on_cuda(cuda_run, shapes_new, tmp_path):
    """The CUDA run exports (on the CPU) to a bundle that predicts like its learner on CUDA and learns a class there."""
    from edgecl.experiment import evaluate
    from edgecl.workflows import export_run
    from edgecl_runtime import Bundle

    gpu, run_dir = cuda_run
    path = export_run(run_dir, tmp_path / "bundle").path
    b = Bundle.load(path, device="cuda")
    assert b.device == "cuda"
    torch_pred = evaluate(gpu.learner, gpu.test, gpu.learner.backbone.spec)
    assert np.mean(b.predict(gpu.test.images).indices == torch_pred) >= MIN_AGREEMENT
    train, test = shapes_new
    b.add_class(NEW_CLASS, class_images(train, NEW_CLASS, 5))
    reloaded = Bundle.load(path, device="cuda")
    assert reloaded.classes[-1] == NEW_CLASS
    assert np.mean(np.array(reloaded.predict(class_images(test, NEW_CLASS)).labels) == NEW_CLASS) >= 0.8


# -------------------------------------------------------- everywhere: the check script's guards, the helper
def _fake_nvidia_smi(tmp_path, works: bool):
    """A directory holding an ``nvidia-smi`` that fails like one without a driver, or reports a GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    if works:
        tool.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\necho 'Fake GPU, 999.99, 1 MiB, 0.0'\n")
    else:
        tool.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n"
                        "exit 9\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_check(tmp_path, bin_dir):
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(CHECK_SCRIPT), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_gpu_check_refuses_a_machine_without_an_nvidia_driver(tmp_path):
    proc = _run_check(tmp_path, _fake_nvidia_smi(tmp_path, works=False))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no CUDA" in proc.stderr and "nvidia-smi" in proc.stderr and "edgecl-runtime[gpu]" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.skipif(ORT_PROBLEM is None, reason="onnxruntime runs on CUDA here: the script would not refuse")
def test_gpu_check_refuses_onnxruntime_without_cuda(tmp_path):
    proc = _run_check(tmp_path, _fake_nvidia_smi(tmp_path, works=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no CUDA" in proc.stderr and CUDA_EP in proc.stderr and "edgecl-runtime[gpu]" in proc.stderr
    assert "Fake GPU" in proc.stdout  # the driver check passed and said so
    assert not (tmp_path / "out").exists()


def test_gpu_check_script_parses():
    assert shutil.which("bash")
    proc = subprocess.run(["bash", "-n", str(CHECK_SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_io_binding_helper_on_cpu():
    """``run_bound`` (what the GPU test binds with) gives ``session.run``'s outputs, on the CPU's device."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["images", "w"], ["features"]), helper.make_node("Relu", ["features"], ["scores"])],
        "g", [helper.make_tensor_value_info("images", f, ["n", 4]), helper.make_tensor_value_info("w", f, [4, 3])],
        [helper.make_tensor_value_info("features", f, ["n", 3]), helper.make_tensor_value_info("scores", f, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"images": rng.normal(size=(5, 4)).astype(np.float32), "w": rng.normal(size=(4, 3)).astype(np.float32)}
    devices, got = run_bound(session, feeds, device="cpu")
    assert devices == ["cpu", "cpu"]
    for name, ref in zip(["features", "scores"], session.run(None, feeds)):
        np.testing.assert_array_equal(got[name], ref)
