"""Reduced-precision backbones: INT8 (onnxruntime quantization) and fp16, checked against fp32.

* ``int8``: onnxruntime static quantization in QDQ format (per-channel int8
  weights, uint8 activations) after ``quant_pre_process``; activation ranges
  from the 99.99th percentile of calibration histograms (``CALIBRATION_CHUNK``
  images at a time, histograms merged); every node before the third Conv stays
  fp32 (``FP32_LEADING_CONVS``, ``leading_conv_nodes``). Without calibration
  images: dynamic quantization (MatMul/Gemm only).
* ``fp16``: for GPU bundles: weights and activations in half precision with
  fp32 inputs/outputs; LayerNormalization, Softmax and ReduceMean stay fp32.

Every conversion is checked on held-out images against the fp32 graph: cosine
similarity of the embeddings and, when a head is given, top-1 agreement.
``check_divergence`` refuses a conversion that moved the embeddings too far (the
exporter turns that into an error unless the user allows it, and records it in
the manifest). Why these settings, with measurements: ``docs/notes-quantize.md``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from edgecl.onnx_graph import INPUT_NAME, ExportError

PRECISIONS = ("fp32", "fp16", "int8")
HEAD_PRECISIONS = ("fp32", "fp16")
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean"]
DYNAMIC_OPS = ["MatMul", "Gemm"]
CALIBRATION_PERCENTILE = 99.99  # activation range: this percentile of the calibration histogram
FP32_LEADING_CONVS = 2  # the first Conv layers of the graph (and the nodes between them) stay fp32
CALIBRATION_CHUNK = 16  # images per histogram update (memory: all activations of a chunk)
MIN_COSINE = 0.98  # mean cosine(fp32, converted) on check images
MIN_AGREEMENT = 0.95  # top-1 agreement with fp32 on check images (when a head is given)


def calibration_sha256(images: np.ndarray) -> str:
    """Identity of a calibration set: sha256 over its shape, dtype and raw pixels, in order."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    h.update(images.tobytes())
    return h.hexdigest()


class _Batches:
    """onnxruntime ``CalibrationDataReader`` over preprocessed NCHW float32 batches.

    ``len`` and ``set_range`` (in batches) let ``quantize_static`` calibrate
    chunk by chunk (``CalibStridedMinMax``, which works for every calibrator).
    """

    def __init__(self, x: np.ndarray, batch_size: int = CALIBRATION_CHUNK):
        self._x, self._bs = x, batch_size
        self._n = -(-len(x) // batch_size)
        self.set_range(0, self._n)

    def __len__(self) -> int:
        return self._n

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(range(start_index, min(end_index, self._n)))

    def get_next(self):
        i = next(self._it, None)
        return None if i is None else {INPUT_NAME: self._x[i * self._bs : (i + 1) * self._bs]}

    def rewind(self):
        self.set_range(0, self._n)


def leading_conv_nodes(path: Path, n_convs: int = FP32_LEADING_CONVS) -> list[str]:
    """Names of the nodes before the ``n_convs + 1``-th Conv of the graph (in its topological order).

    That is the first ``n_convs`` Conv layers and whatever precedes or sits
    between them (activations); with at most ``n_convs`` Convs (e.g. a ViT's
    patch embedding), the nodes up to the last Conv.
    """
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if n_convs <= 0 or not convs:
        return []
    end = convs[n_convs] if len(convs) > n_convs else convs[-1] + 1
    return [n.name for n in nodes[:end]]


def _pre_process(src: Path, dst: Path) -> bool:
    """Shape inference + optimisation before quantization; False if the graph does not allow it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return True
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs: quantize as is
        return False


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray | None = None, per_channel: bool = True,
                  percentile: float | None = CALIBRATION_PERCENTILE,
                  fp32_leading_convs: int = FP32_LEADING_CONVS) -> dict:
    """Write an INT8 copy of the fp32 graph ``src`` to ``dst``; returns what was done (for the manifest).

    ``calibration``: preprocessed float32 ``(N, 3, H, W)`` images, or None for dynamic quantization.
    ``percentile``: activation ranges from this percentile of the calibration
    histograms (None: min/max). ``fp32_leading_convs``: how many of the
    graph's first Conv layers stay fp32 (see the module doc for why).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        if not _pre_process(src, pre):
            shutil.copyfile(src, pre)
        if calibration is not None and len(calibration):
            keep_fp32 = leading_conv_nodes(pre, fp32_leading_convs)
            extra = {"CalibStridedMinMax": 1}  # one reader batch (CALIBRATION_CHUNK images) per calibration pass
            if percentile is not None:
                extra["CalibPercentile"] = float(percentile)
            quantize_static(
                str(pre), str(dst), _Batches(np.ascontiguousarray(calibration, dtype=np.float32)),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax if percentile is None else CalibrationMethod.Percentile,
                nodes_to_exclude=keep_fp32 or None, extra_options=extra,
            )
            info = {"method": "static", "format": "QDQ", "per_channel": per_channel,
                    "activations": "uint8", "weights": "int8",
                    "calibrate_method": "minmax" if percentile is None else "percentile",
                    "calibration_chunk": CALIBRATION_CHUNK, "fp32_leading_convs": fp32_leading_convs,
                    "fp32_nodes": keep_fp32}
            if percentile is not None:
                info["percentile"] = float(percentile)
        else:
            quantize_dynamic(str(pre), str(dst), op_types_to_quantize=DYNAMIC_OPS, per_channel=per_channel,
                             weight_type=QuantType.QInt8)
            info = {"method": "dynamic", "ops": DYNAMIC_OPS, "per_channel": per_channel, "weights": "int8"}
    info["quantized_nodes"] = _count_quantized(dst)
    return info


def convert_fp16(src: Path, dst: Path) -> dict:
    """Write an fp16 copy of ``src`` (fp32 inputs/outputs; ``FP16_KEEP_FP32`` ops stay fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32)
    onnx.save(model, str(dst))
    return {"method": "float16", "keep_fp32_ops": FP16_KEEP_FP32, "io": "float32"}


def _count_quantized(path: Path) -> int:
    import onnx

    ops = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
    return sum(n.op_type in ops for n in onnx.load(str(path), load_external_data=False).graph.node)


def convert_backbone(src: Path, dst: Path, precision: str, calibration: np.ndarray | None = None) -> dict:
    """``src`` fp32 graph -> ``dst`` in ``precision``; returns the manifest's description of it."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        if src != dst:
            shutil.copyfile(src, dst)
        return {"method": "none"}
    if precision == "fp16":
        return convert_fp16(src, dst)
    return quantize_int8(src, dst, calibration)


def _embed(path: Path, inputs: Iterable[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x})[0] for x in inputs]).astype(np.float32)


def compare(reference: Path, converted: Path, inputs: list[np.ndarray], head=None, labels: np.ndarray | None = None) -> dict:
    """How far ``converted`` moved from ``reference`` on ``inputs`` (preprocessed batches).

    Returns cosine similarity of embeddings (mean, min) and, with a runtime
    ``head``, top-1 agreement between the two and (with ``labels``) the top-1
    accuracy of each.
    """
    ref, out = _embed(reference, inputs), _embed(converted, inputs)
    if not np.all(np.isfinite(out)):
        return {"images": int(len(ref)), "cosine_mean": 0.0, "cosine_min": 0.0, "non_finite": True}
    cos = np.sum(ref * out, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-12)
    result = {"images": int(len(ref)), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if head is not None:
        p_ref, p_out = head.scores(ref).argmax(1), head.scores(out).argmax(1)
        result["top1_agreement"] = float(np.mean(p_ref == p_out))
        if labels is not None:
            result["top1_fp32"] = float(np.mean(p_ref == labels))
            result["top1_converted"] = float(np.mean(p_out == labels))
    return result


def check_divergence(check: dict, min_cosine: float = MIN_COSINE, min_agreement: float = MIN_AGREEMENT) -> str | None:
    """Why ``check`` (from ``compare``) is too far from fp32, or None when it is close enough."""
    if check.get("non_finite"):
        return "the converted graph produced NaN or infinite embeddings"
    if check["cosine_mean"] < min_cosine:
        return f"mean cosine similarity to fp32 embeddings {check['cosine_mean']:.4f} < {min_cosine}"
    if "top1_agreement" in check and check["top1_agreement"] < min_agreement:
        return f"top-1 agreement with fp32 {check['top1_agreement']:.3f} < {min_agreement}"
    return None


def cast_head_arrays(arrays: dict[str, np.ndarray], precision: str) -> dict[str, np.ndarray]:
    """Head arrays stored in ``precision`` (float arrays only; the runtime computes in fp32)."""
    if precision not in HEAD_PRECISIONS:
        raise ExportError(f"head precision must be one of {', '.join(HEAD_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return arrays
    return {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}


# ------------------------------------------------------------------ exporter glue
class PrecisionSpec:
    """What the exporter is asked to produce and the images it needs for that.

    ``calibration`` / ``check_images``: raw images (uint8 NHWC or float [0, 1]),
    preprocessed here with the backbone's own preprocessing. ``check_labels``:
    class indices of ``check_images`` in the learner's class order (optional).
    """

    def __init__(
        self,
        precision: str = "fp32",
        calibration: np.ndarray | None = None,
        calibration_source: str | None = None,
        check_images: np.ndarray | None = None,
        check_labels: np.ndarray | None = None,
        head_precision: str = "fp32",
        allow_divergence: bool = False,
    ):
        if precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if head_precision not in HEAD_PRECISIONS:
            raise ExportError(f"head precision must be one of {', '.join(HEAD_PRECISIONS)}, got {head_precision!r}")
        self.precision = precision
        self.calibration = calibration
        self.calibration_source = calibration_source
        self.check_images = check_images
        self.check_labels = check_labels
        self.head_precision = head_precision
        self.allow_divergence = allow_divergence


def apply_precision(onnx_path: Path, spec: PrecisionSpec, input_size, mean, std, head=None, check_inputs=None) -> dict:
    """Convert the fp32 graph at ``onnx_path`` in place to ``spec.precision``; returns the manifest section.

    The conversion is checked against fp32 on ``spec.check_images`` (or, without
    them, on ``check_inputs``, preprocessed batches); a divergent conversion
    raises ``ExportError`` unless ``spec.allow_divergence``.
    """
    from edgecl_runtime.preprocess import preprocess

    section: dict = {"backbone": spec.precision, "head": spec.head_precision}
    if spec.precision == "fp32":
        return section
    cal = None
    if spec.precision == "int8" and spec.calibration is not None and len(spec.calibration):
        cal = np.concatenate([preprocess(spec.calibration[i : i + 64], input_size, mean, std)
                              for i in range(0, len(spec.calibration), 64)])
        section["calibration"] = {
            "sha256": calibration_sha256(spec.calibration),
            "images": int(len(spec.calibration)),
            "source": spec.calibration_source,
        }
    converted = onnx_path.with_name(f".{spec.precision}.{onnx_path.name}")
    try:
        section["conversion"] = convert_backbone(onnx_path, converted, spec.precision, cal)
        if spec.check_images is not None and len(spec.check_images):
            inputs = [preprocess(spec.check_images[i : i + 64], input_size, mean, std)
                      for i in range(0, len(spec.check_images), 64)]
        else:
            inputs = list(check_inputs or [])
        if inputs:
            check = compare(onnx_path, converted, inputs, head, spec.check_labels)
            reason = check_divergence(check)
            section["check"] = check
            section["diverged"] = reason
            if reason and not spec.allow_divergence:
                raise ExportError(f"{spec.precision} backbone diverges from fp32: {reason} (allow it explicitly to export anyway)")
        converted.replace(onnx_path)
    finally:
        converted.unlink(missing_ok=True)
    return section
