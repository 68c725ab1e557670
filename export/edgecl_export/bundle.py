"""Write a self-describing bundle from a trained learner or a run directory.

Layout::

    bundle/
      manifest.json            versions, model, preprocessing, head, classes, sha256 of every file
      model.onnx               images (N, 3, H, W) + head state -> features (N, D), scores (N, C)
      head-000000.safetensors  head arrays (for SimpleCIL: prototypes, counts)
      journal-000000.log       write-ahead journal of on-device updates (appears with the first one)

See ``docs/bundle-format.md`` for the manifest schema and the update protocol.

The bundle is assembled in a temporary sibling directory and renamed into
place, so an interrupted export never leaves a half-written bundle.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecl import __version__
from edgecl_runtime import tensors
from edgecl_runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, file_entry, seal
from edgecl_runtime.storage import json_bytes
from edgecl_runtime.store import initial_fields

from .model_graph import FEATURES, SCORES, FeatureModule, combine, export_scorer, fixed_transform
from .model_graph import metadata as model_metadata
from edgecl.onnx_graph import INPUT_NAME, ExportError, export_onnx, parity
from .quantize import PrecisionSpec, apply_precision, cast_head_arrays

MODEL_ONNX = "model.onnx"
PARITY_TOL = 1e-4


@dataclass
class ExportReport:
    path: Path
    parity_max_abs_diff: float | None
    num_classes: int
    bytes: int


def export_learner(
    learner,
    class_names: list[str],
    out_dir: str | Path,
    opset: int = 17,
    exporter: str = "torchscript",
    check_inputs: list[np.ndarray] | None = None,
    tolerance: float = PARITY_TOL,
    overwrite: bool = False,
    extra: dict | None = None,
    precision: PrecisionSpec | None = None,
) -> ExportReport:
    """Export ``learner`` (with its classes) to a bundle at ``out_dir``.

    Parity: the ONNX model is run on random inputs plus ``check_inputs`` and its
    features and scores compared with torch (features) and the head's own
    scoring; a max abs difference above ``tolerance`` fails the export.
    ``precision``: fp16 / int8 backbone (see ``edgecl_export.quantize``); parity is
    checked on the fp32 graph, the conversion against it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty (use overwrite=True / --force)")
    if len(class_names) != learner.num_classes or len(set(class_names)) != len(class_names):
        raise ExportError(f"need {learner.num_classes} distinct class names, got {len(class_names)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        manifest = _write_bundle(tmp, learner, list(class_names), opset, exporter, check_inputs, tolerance,
                                 precision or PrecisionSpec())
        if extra:
            manifest["source"] = extra
        (tmp / MANIFEST_NAME).write_bytes(json_bytes(seal(manifest)))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out_dir, 0o777 & ~umask)  # mkdtemp made it 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return ExportReport(out_dir, manifest["export"]["parity_max_abs_diff"], len(class_names), size)


def _write_bundle(tmp: Path, learner, class_names: list[str], opset: int, exporter: str, check_inputs,
                  tolerance: float, precision: PrecisionSpec) -> dict:
    """Write ``model.onnx`` and the head file into ``tmp``; returns the manifest (unsealed)."""
    from edgecl_runtime.heads import head_class

    spec = learner.backbone.spec
    kind, arrays = learner.export_head()
    transform, arrays = fixed_transform(kind, arrays)
    module = FeatureModule(learner.embedding_module().cpu().eval(), transform).eval()
    features = tmp / "features.onnx"
    export_onnx(module, spec.input_size, features, opset=opset, exporter=exporter, output_name=FEATURES)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((3, *spec.input_size)).astype(np.float32)] + list(check_inputs or [])
    diff = parity(module, features, inputs)
    if diff > tolerance:
        raise ExportError(f"ONNX/torch parity failed: max abs diff {diff:.3g} > {tolerance:g}")
    stored = cast_head_arrays(arrays, precision.head_precision)  # what the head file holds
    dim = int(parity_features(module, inputs[0]).shape[1])  # after APER's/EASE's concatenation, RanPAC's projection
    head = head_class(kind).from_arrays(stored, len(class_names), dim)
    if precision.precision != "fp32":
        precision_section = apply_precision(features, precision, spec.input_size, spec.mean, spec.std, head, check_inputs)
    else:
        precision_section = {"backbone": "fp32", "head": precision.head_precision}
    preprocess = {"input_size": list(spec.input_size), "mean": list(spec.mean), "std": list(spec.std),
                  "resize": "bilinear-antialias",
                  "layout": "NHWC uint8 0..255 or float 0..1 in; NCHW float32 normalised to the backbone"}
    scorer = tmp / "scorer.onnx"
    head_inputs = export_scorer(kind, head, scorer, opset)
    shapes = {k: list(v.shape) for k, v in head.graph_inputs().items()}
    combine(features, scorer, tmp / MODEL_ONNX, model_metadata(kind, class_names, preprocess, shapes, FORMAT_VERSION))
    features.unlink()
    scorer.unlink()
    score_diff = score_parity(tmp / MODEL_ONNX, head, inputs)
    if precision.precision == "fp32" and score_diff > tolerance:
        raise ExportError(f"model.onnx scores disagree with the {kind} head: max abs diff {score_diff:.3g} > {tolerance:g}")
    head_file = "head-000000.safetensors"
    (tmp / head_file).write_bytes(tensors.to_bytes(stored))
    manifest = _manifest(learner, kind, class_names, dim, opset, exporter, precision_section, preprocess, head_inputs)
    manifest["export"].update({"parity_max_abs_diff": diff, "score_parity_max_abs_diff": score_diff,
                               "parity_tolerance": tolerance})
    manifest["files"] = {name: file_entry(tmp / name) for name in (MODEL_ONNX, head_file)}
    manifest.update(initial_fields(kind, head_file, stored, class_names))  # bundle_id, base, journal
    return manifest


def parity_features(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x[:1])).numpy()


def score_parity(model_path: Path, head, inputs: list[np.ndarray]) -> float:
    """Max |model.onnx scores - the head's own scores of model.onnx's features| over ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = dict(head.graph_inputs())
    worst = 0.0
    for x in inputs:
        f, s = session.run([FEATURES, SCORES], {INPUT_NAME: x, **feeds})
        worst = max(worst, float(np.max(np.abs(s - head.scores(f))))) if s.size else worst
    return worst


def _manifest(learner, kind, class_names, dim, opset, exporter, precision_section, preprocess, head_inputs) -> dict:
    import onnx
    import onnxruntime
    import torch

    spec = learner.backbone.spec
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgecl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "file": MODEL_ONNX,
            "inputs": [INPUT_NAME, *head_inputs],
            "head_inputs": head_inputs,
            "outputs": [FEATURES, SCORES],
            "feature_dim": dim,
            "opset": opset,
            "exporter": exporter,
        },
        "backbone": {
            "name": spec.name,
            "timm_name": spec.timm_name,
            "weights": weights_record(spec),
            "embedding_dim": dim,  # the width of model.onnx's features: what the head and journal take
            "precision": precision_section["backbone"],
        },
        "preprocess": preprocess,
        "learner": {"name": learner.name, "hparams": learner.hparams},
        "head": {"kind": kind, "file": "head-000000.safetensors", "generation": 0},
        "classes": list(class_names),
        "export": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                   "python": platform.python_version()},
        "precision": precision_section,
    }


def weights_record(spec) -> dict:
    """Where the backbone's weights came from, with no machine path: package, version, file name, sha256."""
    from edgecl.zoo import weights_source

    return weights_source(spec)


def export_run(run_dir: str | Path, out_dir: str | Path, **kwargs) -> ExportReport:
    """Export a saved run directory (see ``edgecl.rundir``) to a bundle.

    Besides random inputs, parity is checked on real images of the run's data
    set when it is the embedded shapes set.
    """
    from edgecl.rundir import load_run

    run, learner = load_run(Path(run_dir))
    check = kwargs.pop("check_inputs", None)
    if check is None and str(run["config"].get("dataset", "")).startswith("shapes"):
        from edgecl.data import make_shapes
        from edgecl_runtime.preprocess import preprocess

        spec = learner.backbone.spec
        _, test = make_shapes(min(learner.num_classes, 100), 1, 1, seed=run["config"].get("data_seed", 0))
        check = [preprocess(test.images[:8], spec.input_size, spec.mean, spec.std)]
    source = {"run_dir": str(Path(run_dir).resolve()), "metrics": run.get("metrics", {})}
    precision = kwargs.pop("precision", "fp32")
    if isinstance(precision, str):  # images for the conversion come from the run's own data
        precision = precision_from_run(run, learner, precision, **kwargs.pop("precision_options", {}))
    return export_learner(learner, run["class_names"], out_dir, check_inputs=check, extra=source, precision=precision, **kwargs)


def precision_from_run(run: dict, learner, precision: str, calibration_size: int = 128, head_precision: str = "fp32",
                       allow_divergence: bool = False) -> PrecisionSpec:
    """A ``PrecisionSpec`` whose calibration (train split) and check images (test split) come from the run's data."""
    if precision == "fp32":
        return PrecisionSpec("fp32", head_precision=head_precision)
    from edgecl.data import DataError

    from .quantize import run_precision_data

    n_cal = calibration_size if precision == "int8" else 0
    try:
        cal, desc, check, labels = run_precision_data(
            run["config"], run["class_names"], learner.backbone.spec.input_size[1:], n_cal
        )
    except (DataError, KeyError, OSError) as exc:
        raise ExportError(
            f"cannot read the run's data set {run['config'].get('dataset')!r} for {precision} calibration/check "
            f"({exc}); make it available again, or export fp32"
        ) from exc
    return PrecisionSpec(precision, cal, desc, check, labels, head_precision, allow_divergence)
