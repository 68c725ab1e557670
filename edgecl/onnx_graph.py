"""torch module -> ONNX graph, checked against torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import EdgeclError

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
MIN_OPSET = 17


class ExportError(EdgeclError, RuntimeError):
    """The module could not be exported, or the ONNX graph disagrees with torch."""


def export_onnx(module: nn.Module, input_size, path: Path, opset: int = 17, exporter: str = "torchscript",
                output_name: str = OUTPUT_NAME) -> None:
    """Write ``module`` (images ``(N, *input_size)`` -> ``(N, D)``) with a dynamic batch axis."""
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    module = module.eval()
    example = torch.zeros(2, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            )
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(path))
        else:
            raise ExportError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    onnx.checker.check_model(str(path), full_check=True)


def scaled_diff(out: np.ndarray, ref: np.ndarray) -> float:
    """Max |out - ref| / max(1, max |ref|): absolute below 1, relative to the reference's scale above it."""
    return float(np.max(np.abs(out - ref))) / max(1.0, float(np.max(np.abs(ref))))


def parity(module: nn.Module, onnx_path: Path, inputs: list[np.ndarray]) -> float:
    """Max |torch - onnxruntime| / max(1, max |torch|) over the given input batches (float32 NCHW).

    Relative to the output's scale above 1: features of a random projection
    (RanPAC) reach magnitudes of 10-100, where float32 sums differ by more than
    1e-4 in absolute terms.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = module.eval()(torch.from_numpy(x)).numpy()
            out = session.run(None, {INPUT_NAME: x})[0]
            if out.shape != ref.shape:
                raise ExportError(f"ONNX output shape {out.shape} != torch {ref.shape}")
            worst = max(worst, scaled_diff(out, ref))
    return worst
