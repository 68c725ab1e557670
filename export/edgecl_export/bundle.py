"""Write a self-describing bundle from a trained learner.

Layout::

    bundle/
      manifest.json            versions, model, preprocessing, head, classes, sha256 of every file
      model.onnx               images (N, 3, H, W) + head state -> features (N, D), scores (N, C)
      head-000000.safetensors  head arrays (for SimpleCIL: prototypes, counts)
      journal-000000.log       write-ahead journal of on-device updates (appears with the first one)

See ``docs/bundle-format.md`` for the manifest schema and the update protocol.

The bundle is assembled in a temporary sibling directory and renamed into
place, so an interrupted export never leaves a half-written bundle. The
manifest is built by the runtime (``edgecl_runtime.manifest.new_manifest``)
against the same schema its readers check (``edgecl_runtime.manifest_schema``).
Exporting a saved run directory (which reads the run's data) is
``edgecl.workflows.export_run``.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecl import __version__
from edgecl_runtime import tensors
from edgecl_runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, file_entry, new_manifest
from edgecl_runtime.storage import json_bytes, temp_name
from edgecl_runtime.store import initial_fields

from .card import card_section, write_bundle_card
from .model_graph import FEATURES, SCORES, FeatureModule, combine, export_scorer, fixed_transform
from .model_graph import metadata as model_metadata
from .openset import UnknownCalibration, unknown_section
from edgecl.onnx_graph import INPUT_NAME, ExportError, export_onnx, parity, scaled_diff
from .quantize import PrecisionSpec, apply_precision, cast_head_arrays
from .text_graph import TEXT_ONNX, text_tower_refusal, write_text_tower

MODEL_ONNX = "model.onnx"
HEAD_FILE = "head-000000.safetensors"
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
    unknown: UnknownCalibration | None = None,
) -> ExportReport:
    """Export ``learner`` (with its classes) to a bundle at ``out_dir``.

    Parity: the ONNX model is run on random inputs plus ``check_inputs`` and its
    features and scores compared with torch (features) and the head's own
    scoring; a max abs difference above ``tolerance`` fails the export.
    ``precision``: fp16 / int8 backbone (see ``edgecl_export.quantize``); parity is
    checked on the fp32 graph, the conversion against it. ``extra`` is recorded
    as the manifest's ``source``. ``unknown``: training images the unknown threshold is calibrated on
    (``edgecl_export.openset``; without them the bundle has no default threshold).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty (use overwrite=True / --force)")
    if len(class_names) != learner.num_classes or len(set(class_names)) != len(class_names):
        raise ExportError(f"need {learner.num_classes} distinct class names, got {len(class_names)}")
    with staged_directory(out_dir) as tmp:
        sections = _write_bundle(tmp, learner, list(class_names), opset, exporter, check_inputs, tolerance,
                                 precision or PrecisionSpec(), unknown)
        if extra:  # the run's configuration feeds the model card only (it may name local paths)
            sections["source"] = {k: v for k, v in extra.items() if k != "config"}
        sections["card"] = card_section(tmp, sections, extra)  # what the model card needs from the export
        manifest = new_manifest(sections)
        (tmp / MANIFEST_NAME).write_bytes(json_bytes(manifest))
        write_bundle_card(tmp)  # README.md, the model card: outside the checksums, rewritten by every device update
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return ExportReport(out_dir, manifest["export"]["parity_max_abs_diff"], len(class_names), size)


@contextmanager
def staged_directory(out_dir: Path):
    """A temporary sibling of ``out_dir`` to fill; renamed over ``out_dir`` when the block succeeds, removed
    when it fails, so an interrupted export never leaves a half-written bundle."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        old = temp_name(out_dir) if out_dir.exists() else None
        if old is not None:  # moved aside, not deleted, until the new bundle is in place
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:
                old.rename(out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out_dir, 0o777 & ~umask)  # mkdtemp made it 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class _Graph:
    """The fp32 feature graph written and parity-checked: its module, file, check inputs and difference."""

    module: FeatureModule
    path: Path
    inputs: list[np.ndarray]
    diff: float


def _feature_graph(tmp: Path, learner, transform, opset: int, exporter: str, check_inputs, tolerance: float) -> _Graph:
    """Export images -> features to ``tmp/features.onnx`` and check it against torch."""
    spec = learner.backbone.spec
    module = FeatureModule(learner.embedding_module().cpu().eval(), transform).eval()
    path = tmp / "features.onnx"
    export_onnx(module, spec.input_size, path, opset=opset, exporter=exporter, output_name=FEATURES)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((3, *spec.input_size)).astype(np.float32)] + list(check_inputs or [])
    diff = parity(module, path, inputs)
    if diff > tolerance:
        raise ExportError(f"ONNX/torch parity failed: max abs diff {diff:.3g} > {tolerance:g}")
    return _Graph(module, path, inputs, diff)


def preprocess_record(spec) -> dict:
    """The manifest's ``preprocess`` section for a backbone spec (``background``: what transparent pixels of image
    files are composited on, in training and on the device; ``edgecl_runtime.io``)."""
    from edgecl_runtime.io import BACKGROUND

    return {"input_size": list(spec.input_size), "mean": list(spec.mean), "std": list(spec.std),
            "resize": "bilinear-antialias", "background": list(BACKGROUND),
            "layout": "NHWC uint8 0..255 or float 0..1 in; NCHW float32 normalised to the backbone"}


def _write_bundle(tmp: Path, learner, class_names: list[str], opset: int, exporter: str, check_inputs,
                  tolerance: float, precision: PrecisionSpec, calibration: UnknownCalibration | None = None) -> dict:
    """Write ``model.onnx`` and the head file into ``tmp``; returns the manifest's sections (unsealed)."""
    from edgecl_runtime.heads import head_class

    spec = learner.backbone.spec
    kind, arrays = learner.export_head()
    transform, arrays = fixed_transform(kind, arrays)
    graph = _feature_graph(tmp, learner, transform, opset, exporter, check_inputs, tolerance)
    stored = cast_head_arrays(arrays, precision.head_precision)  # what the head file holds
    dim = int(parity_features(graph.module, graph.inputs[0]).shape[1])  # after APER's/EASE's concatenation
    head = head_class(kind).from_arrays(stored, len(class_names), dim)
    if precision.precision != "fp32":
        precision_section = apply_precision(graph.path, precision, spec.input_size, spec.mean, spec.std, head,
                                            check_inputs)
    else:
        precision_section = {"backbone": "fp32", "head": precision.head_precision}
    preprocess = preprocess_record(spec)
    head_inputs = _combine(tmp, graph.path, kind, head, class_names, preprocess, opset)
    score_diff = score_parity(tmp / MODEL_ONNX, head, graph.inputs)
    if precision.precision == "fp32" and score_diff > tolerance:
        raise ExportError(f"model.onnx scores disagree with the {kind} head: max abs diff {score_diff:.3g} > {tolerance:g}")
    (tmp / HEAD_FILE).write_bytes(tensors.to_bytes(stored))
    sections = _sections(learner, kind, class_names, dim, opset, exporter, precision_section, preprocess, head_inputs)
    sections["export"].update({"parity_max_abs_diff": graph.diff, "score_parity_max_abs_diff": score_diff,
                               "parity_tolerance": tolerance})
    sections["unknown"] = unknown_section(tmp / MODEL_ONNX, head, preprocess, calibration)
    text = _text_tower(tmp, learner, graph, kind, transform is not None, dim, opset, tolerance)
    if isinstance(text, dict):
        sections["text"] = text
    elif text is not None:
        sections["export"]["text_tower"] = text
    files = (MODEL_ONNX, HEAD_FILE) + ((TEXT_ONNX,) if isinstance(text, dict) else ())
    sections["files"] = {name: file_entry(tmp / name) for name in files}
    sections.update(initial_fields(kind, HEAD_FILE, stored, class_names))  # bundle_id, head, base, journal
    return sections


def _text_tower(tmp: Path, learner, graph: _Graph, kind: str, transformed: bool, dim: int, opset: int,
                tolerance: float) -> dict | str | None:
    """The manifest's ``text`` section when the backbone is a CLIP image tower whose embeddings (or their unit
    rows) the bundle's features still are (``text_graph``); else the reason there is none (``None`` for a
    non-CLIP backbone)."""
    import torch

    from edgecl.zoo import CLIP_MODELS, load_clip

    clip = getattr(learner.backbone, "clip", None)
    name = learner.backbone.spec.notes.get("clip")
    if clip is None and name in CLIP_MODELS:  # a backbone rebuilt from a run directory
        clip = load_clip(name)
    if clip is None:
        return None
    why = text_tower_refusal(clip, kind, transformed, dim)
    if why is not None:
        return f"none: {why}"
    with torch.no_grad():  # the features: the tower's embeddings, or their unit rows (e.g. PROOF)
        x = torch.from_numpy(graph.inputs[0])
        feats, ref = graph.module(x), clip.eval().encode_image(x)
        gaps = [float((feats - r).abs().max()) for r in (ref, torch.nn.functional.normalize(ref, dim=-1))]
    if min(gaps) > tolerance:
        return f"none: the learner changed the image tower (features differ from {clip.name}'s by {min(gaps):.3g})"
    return write_text_tower(clip, tmp, opset, tolerance, unit=gaps[1] < gaps[0])


def _combine(tmp: Path, features: Path, kind: str, head, class_names, preprocess: dict, opset: int) -> list[str]:
    """``tmp/model.onnx`` = the feature graph + the head's scoring graph; returns the head's input names."""
    scorer = tmp / "scorer.onnx"
    head_inputs = export_scorer(kind, head, scorer, opset)
    shapes = {k: list(v.shape) for k, v in head.graph_inputs().items()}
    combine(features, scorer, tmp / MODEL_ONNX, model_metadata(kind, class_names, preprocess, shapes, FORMAT_VERSION))
    features.unlink()
    scorer.unlink()
    return head_inputs


def parity_features(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x[:1])).numpy()


def score_parity(model_path: Path, head, inputs: list[np.ndarray]) -> float:
    """Max ``scaled_diff`` (``edgecl.onnx_graph``) of model.onnx's scores and the head's own scores of model.onnx's
    features over ``inputs``: relative to the scores' scale above 1, as the feature parity (a PROOF score sums dot
    products of layer-normed vectors, hundreds in size, where float32 and the head's float64 differ by more than
    1e-4 in absolute terms)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = dict(head.graph_inputs())
    worst = 0.0
    for x in inputs:
        f, s = session.run([FEATURES, SCORES], {INPUT_NAME: x, **feeds})
        worst = max(worst, scaled_diff(s, head.scores(f))) if s.size else worst
    return worst


def _sections(learner, kind, class_names, dim, opset, exporter, precision_section, preprocess, head_inputs) -> dict:
    """The manifest's descriptive sections (``edgecl_runtime.manifest_schema`` lists every field)."""
    import onnx
    import onnxruntime
    import torch

    spec = learner.backbone.spec
    return {
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
        "head": {"kind": kind, "file": HEAD_FILE, "generation": 0},
        "classes": list(class_names),
        "export": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                   "python": platform.python_version()},
        "precision": precision_section,
    }


def weights_record(spec) -> dict:
    """Where the backbone's weights came from, with no machine path: package, version, file name, sha256."""
    from edgecl.zoo import weights_source

    return weights_source(spec)
