"""Inference engines for a frozen embedding module: images ``(N, C, H, W)`` float32 -> ``(N, D)`` float32.

* ``torch``: the module itself, eager, under ``torch.no_grad`` (the reference).
* ``torch-fused``: traced and frozen TorchScript with ``optimize_for_inference``
  (BatchNorm folded into the convolutions, oneDNN layouts on CPU).
* ``onnx``: the graph exported with the exporter's own ``export_onnx`` (the
  graph a bundle ships), run by onnxruntime with the runtime's session options.

``build_engine`` checks every engine but ``torch`` against the module on a
sample batch (max abs difference <= ``PARITY_ATOL``) and raises
``EngineError`` if it disagrees or cannot be built. ``pick_engine`` ("auto")
builds the candidates, drops the failing ones and keeps the fastest on the
sample batch.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import EdgeclError
from ..onnx_graph import export_onnx

ENGINES = ("torch", "torch-fused", "onnx")
ENGINE_CHOICES = ("auto", *ENGINES)
PARITY_ATOL = 1e-4

Engine = Callable[[np.ndarray], np.ndarray]


class EngineError(EdgeclError, RuntimeError):
    """An engine could not be built for a module, or disagrees with eager torch."""


def torch_engine(module: nn.Module, device: str = "cpu") -> Engine:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # not inference_mode: modules still in training may keep tensors for autograd
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


def fused_engine(module: nn.Module, sample: np.ndarray) -> Engine:
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), torch.from_numpy(sample), check_trace=False)
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(x)).float().numpy()

    return run


def onnx_engine(module: nn.Module, input_size, threads: int | None) -> Engine:
    from edgecl_runtime.session import require_onnxruntime, session_options

    ort = require_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="edgecl-engine-") as tmp:
        path = Path(tmp) / "embedding.onnx"
        export_graph(module, input_size, path)
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0], dtype=np.float32)

    return run


def export_graph(module: nn.Module, input_size, path: Path) -> None:
    """The exporter's ONNX graph of ``module`` (``edgecl.onnx_graph``, which bundles use too)."""
    export_onnx(module, input_size, path)


def build_engine(kind: str, module: nn.Module, sample: np.ndarray, threads: int | None = None,
                 device: str = "cpu", reference: np.ndarray | None = None) -> Engine:
    """Engine ``kind`` for ``module``, parity-checked on ``sample`` against eager torch (whose output on
    ``sample`` may be given as ``reference``); see module doc."""
    if kind == "torch":
        return torch_engine(module, device)
    try:
        if kind == "torch-fused":
            engine = fused_engine(module, sample)
        elif kind == "onnx":
            engine = onnx_engine(module, sample.shape[1:], threads)
        else:
            raise EngineError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {kind!r}")
        out = engine(sample)
    except EngineError:
        raise
    except Exception as exc:  # tracing / export / onnxruntime raise many types
        raise EngineError(f"{kind} engine unavailable for {type(module).__name__}: {type(exc).__name__}: {exc}") from exc
    ref = torch_engine(module)(sample) if reference is None else reference
    diff = float(np.max(np.abs(out - ref))) if out.shape == ref.shape and out.size else float(out.shape != ref.shape)
    if out.shape != ref.shape or not diff <= PARITY_ATOL:
        raise EngineError(f"{kind} engine differs from eager torch (max abs {diff:.2e}, limit {PARITY_ATOL:g})")
    return engine


def timed(engine: Engine, sample: np.ndarray, repeats: int = 3) -> float:
    """Best of ``repeats`` calls (the minimum is the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(sample)
        best = min(best, time.perf_counter() - t0)
    return best


def pick_engine(module: nn.Module, sample: np.ndarray, threads: int | None = None,
                candidates=ENGINES) -> tuple[str, Engine, dict[str, float | str]]:
    """The fastest of ``candidates`` that builds and passes parity on ``sample``: ``(kind, engine,
    seconds per call or the error, by kind)``. Each engine is timed after its first call (the parity
    check) has warmed it up."""
    reference = torch_engine(module)
    ref = reference(sample)
    timings: dict[str, float | str] = {}
    built: dict[str, Engine] = {}
    for kind in candidates:
        try:
            built[kind] = reference if kind == "torch" else build_engine(kind, module, sample, threads, reference=ref)
        except EngineError as exc:
            timings[kind] = str(exc)
            continue
        timings[kind] = timed(built[kind], sample)
    if not built:
        raise EngineError(f"no engine works for {type(module).__name__}: {timings}")
    kind = min(built, key=lambda k: timings[k])
    return kind, built[kind], timings
