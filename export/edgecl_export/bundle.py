"""Write a self-describing bundle from a trained learner or a run directory.

Layout::

    bundle/
      manifest.json        versions, backbone, preprocessing, head, classes, sha256 of every file
      backbone.onnx        images (N, 3, H, W) float32, normalised -> embeddings (N, D)
      head-000000.npz      head arrays (for SimpleCIL: prototypes, counts)
      journal-000000.log   write-ahead journal of on-device updates (appears with the first one)

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
from edgecl_runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, file_entry, seal
from edgecl_runtime.storage import json_bytes, npz_bytes
from edgecl_runtime.store import initial_fields

from .onnx_graph import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx, parity
from .quantize import PrecisionSpec, apply_precision, cast_head_arrays

BACKBONE_ONNX = "backbone.onnx"
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

    Parity: the ONNX backbone is run on random inputs plus ``check_inputs`` and
    compared with torch; a max abs difference above ``tolerance`` fails the export.
    ``precision``: fp16 / int8 backbone (see ``edgecl_export.quantize``); parity is
    checked on the fp32 graph, the conversion against it.
    """
    import onnx
    import onnxruntime
    import torch

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty (use overwrite=True / --force)")
    if len(class_names) != learner.num_classes or len(set(class_names)) != len(class_names):
        raise ExportError(f"need {learner.num_classes} distinct class names, got {len(class_names)}")
    spec = learner.backbone.spec
    module = learner.embedding_module().cpu().eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        export_onnx(module, spec.input_size, tmp / BACKBONE_ONNX, opset=opset, exporter=exporter)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((3, *spec.input_size)).astype(np.float32)] + list(check_inputs or [])
        diff = parity(module, tmp / BACKBONE_ONNX, inputs)
        if diff > tolerance:
            raise ExportError(f"ONNX/torch parity failed: max abs diff {diff:.3g} > {tolerance:g}")
        # The graph's output width, not the backbone's: APER concatenates two paths, EASE one per task.
        with torch.no_grad():
            dim = int(module(torch.zeros(1, *spec.input_size)).shape[1])
        kind, arrays = learner.export_head()
        precision = precision or PrecisionSpec()
        if precision.precision != "fp32":
            from edgecl_runtime.heads import head_class

            head = head_class(kind).from_arrays(arrays, len(class_names), dim)
            precision_section = apply_precision(
                tmp / BACKBONE_ONNX, precision, spec.input_size, spec.mean, spec.std, head, check_inputs
            )
        else:
            precision_section = {"backbone": "fp32", "head": precision.head_precision}
        head_file = "head-000000.npz"
        (tmp / head_file).write_bytes(npz_bytes(cast_head_arrays(arrays, precision.head_precision)))
        files = [BACKBONE_ONNX, head_file]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "edgecl_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "backbone": {
                "name": spec.name,
                "timm_name": spec.timm_name,
                "weights": spec.weights,
                "weights_sha256": spec.weights_sha256,
                "file": BACKBONE_ONNX,
                "input_name": INPUT_NAME,
                "output_name": OUTPUT_NAME,
                "embedding_dim": dim,
                "opset": opset,
                "exporter": exporter,
                "precision": precision_section["backbone"],
            },
            "preprocess": {
                "input_size": list(spec.input_size),
                "mean": list(spec.mean),
                "std": list(spec.std),
                "resize": "bilinear-antialias",
                "layout": "NHWC uint8 0..255 or float 0..1 in; NCHW float32 normalised to the backbone",
            },
            "learner": {"name": learner.name, "hparams": learner.hparams},
            "head": {"kind": kind, "file": head_file, "generation": 0},
            "classes": list(class_names),
            "export": {
                "parity_max_abs_diff": diff,
                "parity_tolerance": tolerance,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
            },
            "precision": precision_section,
            "files": {name: file_entry(tmp / name) for name in files},
        }
        written = cast_head_arrays(arrays, precision.head_precision)  # what head_file holds
        manifest.update(initial_fields(kind, head_file, written, list(class_names)))  # bundle_id, base, journal
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
    return ExportReport(out_dir, diff, len(class_names), size)


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
