"""Training-side evaluation of bundles: the data-set loader and the torch comparison the device verbs call.

``edgecl eval`` and ``edgecl bench`` belong to the runtime; when this
distribution is installed they find these functions through the
``edgecl.plugins`` entry points (``pyproject.toml``).
"""

from __future__ import annotations

import time
from pathlib import Path

from .data import load_dataset

__all__ = ["compare_torch", "load_dataset"]


def compare_torch(b, run_dir: str | Path, threads: int | None = None, repeats: int = 30, batch_size: int = 32,
                  compile: bool = True, images=None) -> dict:
    """ONNX bundle vs the run's torch learner (eager, ``torch.compile``) on the same images, in this process.

    Both sides start from the same preprocessed float32 batch and end at the
    top-1 class (backbone + head). The torch side is the learner's exported
    computation (``edgecl.learners.scoring.scoring_module``: the graph of
    ``model.onnx`` in torch, no numpy), run eager and compiled by inductor.
    ``speedup_*`` is torch time / ONNX time (> 1: the bundle is faster).
    ``agreement`` is the share of images where the learner (its own scoring,
    ``Learner.logits``) and the bundle pick the same class. ``threads`` sets
    both torch's and onnxruntime's intra-op threads (the bundle ``b`` should
    have been loaded with the same).
    """
    import numpy as np
    import torch

    from .learners.scoring import scoring_module
    from .rundir import load_run
    from .zoo import backbone_from_run

    if threads:
        torch.set_num_threads(int(threads))
    _, learner = load_run(Path(run_dir), rebuild=backbone_from_run)
    _, h, w = b.input_size
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8)
    x = b.preprocess(images[:batch_size])
    out: dict = {"run_dir": str(run_dir), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "onnx_threads": threads, "onnx_precision": b.manifest["backbone"].get("precision", "fp32"),
                 "batch_sizes": {}}
    module = scoring_module(learner)
    compiled, out["torch_compile"] = _compiled(module, x) if compile else (None, {"status": "disabled"})
    with torch.inference_mode():
        ref = learner.logits(torch.from_numpy(x)).argmax(1).numpy()
    out["agreement"] = float(np.mean(ref == b._scores_preprocessed(x).argmax(1)[: len(ref)]))
    for n in sorted({1, len(x)}):
        out["batch_sizes"][str(n)] = _timings(b, module, compiled, x[:n], repeats if n == 1 else max(5, repeats // 3))
    return out


def _compiled(module, x) -> tuple:
    """``torch.compile`` (inductor) of ``module``, compiled for the batch sizes measured, and how that went:
    compile time and the largest difference of its scores from eager ones."""
    import torch

    try:
        t0 = time.perf_counter()
        compiled = torch.compile(module, backend="inductor", dynamic=False)
        diff = 0.0
        with torch.inference_mode():
            for n in sorted({1, len(x)}):
                xt = torch.from_numpy(x[:n])
                diff = max(diff, float((compiled(xt) - module(xt)).abs().max()))  # compiles (once per batch size)
        return compiled, {"status": "ok", "backend": "inductor", "compile_s": time.perf_counter() - t0,
                          "max_abs_diff_vs_eager": diff}
    except Exception as exc:  # noqa: BLE001 - inductor needs a C compiler and more; report why not
        return None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _timings(b, module, compiled, xb, repeats: int) -> dict:
    """Interleaved timings of the bundle, torch eager and (if any) the compiled model on one batch, and ratios."""
    import torch

    from edgecl_runtime.benchmark import interleaved

    def torch_fn(fn, xt):
        def run():
            with torch.inference_mode():
                return fn(xt).argmax(1)
        return run

    xt = torch.from_numpy(xb)
    fns = {"onnx": lambda: b._scores_preprocessed(xb).argmax(1), "torch_eager": torch_fn(module, xt)}
    if compiled is not None:
        fns["torch_compile"] = torch_fn(compiled, xt)
    t = interleaved(fns, repeats)
    row = dict(t)
    # p50 ratios, and ratios of the fastest calls (less sensitive to other processes on the machine)
    row["speedup_vs_eager"] = t["torch_eager"]["p50_ms"] / t["onnx"]["p50_ms"]
    row["speedup_vs_eager_min"] = t["torch_eager"]["min_ms"] / t["onnx"]["min_ms"]
    if "torch_compile" in t:
        row["speedup_vs_compile"] = t["torch_compile"]["p50_ms"] / t["onnx"]["p50_ms"]
        row["speedup_vs_compile_min"] = t["torch_compile"]["min_ms"] / t["onnx"]["min_ms"]
    return row
