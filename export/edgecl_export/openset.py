"""The bundle's ``unknown`` section: its unknown score and the threshold calibrated on training images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecl_runtime import unknown
from edgecl_runtime.preprocess import preprocess

from .model_graph import FEATURES

BATCH = 64


@dataclass
class UnknownCalibration:
    """Training images (uint8 NHWC) with labels indexing the bundle's classes, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    description: str = ""
    target: float = unknown.DEFAULT_TARGET


def model_features(model_path: Path, head, images: np.ndarray, prep: dict) -> np.ndarray:
    """``model.onnx``'s features of ``images`` (the device's own numbers: its precision, its preprocessing)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds, name = dict(head.graph_inputs()), session.get_inputs()[0].name
    x = preprocess(images, prep["input_size"], prep["mean"], prep["std"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = [session.run([FEATURES], {name: x[i : i + BATCH].astype(dtype), **feeds})[0] for i in range(0, len(x), BATCH)]
    return np.concatenate(out).astype(np.float32)


def unknown_section(model_path: Path, head, prep: dict, calibration: UnknownCalibration | None) -> dict:
    """The manifest's ``unknown`` record: ``edgecl_runtime.unknown.calibrate`` on the calibration images, or the
    head kind's score without a threshold when there are none."""
    if calibration is None or len(calibration.labels) == 0:
        return {"score": head.UNKNOWN_SCORE, "threshold": None, "target_acceptance": None,
                "method": "not calibrated: no training images at export (pass a threshold to predict)"}
    feats = model_features(model_path, head, calibration.images, prep)
    return unknown.calibrate(head, feats, calibration.labels, target=calibration.target,
                             description=calibration.description)
