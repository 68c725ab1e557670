"""What a bundle costs on this device: cold start, latency, throughput, memory, add-class.

Numpy + onnxruntime only, so it runs on the device itself::

    python -m edgecl_runtime.benchmark BUNDLE [--device cpu] [--threads 2] [--repeats 50]

prints one JSON object (see ``measure``). ``edgecl bench`` runs it in a fresh
subprocess, so that cold start and peak RSS are those of a process that only
holds the runtime (no torch, no training code).

Timings are wall-clock medians (p50) and 95th percentiles over ``repeats``
calls after warm-up calls; images are random uint8 pixels at the model's
input size (the cost does not depend on the pixel values). add-class runs on
a temporary copy of the bundle, never on the bundle itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def timings(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Call ``fn`` ``warmup`` + ``repeats`` times; milliseconds: p50, p95, min, mean."""
    return interleaved({"fn": fn}, repeats, warmup, block=max(1, repeats))["fn"]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                block: int = 5) -> dict[str, dict[str, float]]:
    """``timings`` of several functions run in turn, so that a busy machine slows them alike.

    Use it for ratios. Each round runs every function (in rotating order) as a
    block: one untimed call, then ``block`` timed calls, until each has
    ``repeats`` timings. Blocks, not single calls in turn: the thread pools of
    onnxruntime, torch and numpy's BLAS keep spinning for a while after a call,
    and the first call of another framework pays for it. Alternating single
    calls measured torch eager at 58 ms and the ONNX graph at 22 ms for what
    takes 24 and 11.6 ms in blocks (embedded ViT, batch 32, 2 threads).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    t = {n: [] for n in names}
    r = 0
    while len(t[names[0]]) < repeats:
        for n in names[r % len(names):] + names[: r % len(names)]:
            fns[n]()  # untimed: the other framework's threads settle
            for _ in range(min(block, repeats - len(t[n]))):
                t0 = time.perf_counter()
                fns[n]()
                t[n].append(time.perf_counter() - t0)
        r += 1
    out = {}
    for n, v in t.items():
        v = np.asarray(v) * 1e3
        out[n] = {"p50_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "min_ms": float(v.min()),
                  "mean_ms": float(v.mean()), "repeats": int(repeats)}
    return out


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process so far, MiB (None where it cannot be read).

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this
    process's own memory map. (``getrusage``'s ``ru_maxrss`` is not used there:
    it keeps the parent's peak across fork + exec, so a runtime process started
    from a big parent would report the parent's memory.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def bundle_sizes(path: str | Path) -> dict[str, int]:
    """Bytes on disk: the bundle (manifest + files it lists), its ONNX backbone, the optional optimised-graph cache."""
    from .manifest import MANIFEST_NAME, onnx_file, read_manifest
    from .session import CACHE_DIR

    path = Path(path)
    m = read_manifest(path)
    files = sum((path / n).stat().st_size for n in m["files"] if (path / n).is_file())
    cache = sum(p.stat().st_size for p in (path / CACHE_DIR).glob("*") if p.is_file()) if (path / CACHE_DIR).is_dir() else 0
    return {
        "bundle_bytes": files + (path / MANIFEST_NAME).stat().st_size,
        "onnx_bytes": (path / onnx_file(m)).stat().st_size,
        "cache_bytes": cache,
    }


def import_seconds(module: str = "edgecl_runtime", python: str | None = None) -> float:
    """Wall time of ``import module`` in a fresh interpreter (median of 3)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    runs = [float(subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env).stdout) for _ in range(3)]
    return float(np.median(runs))


def machine() -> dict:
    """Where the numbers come from."""
    import onnxruntime as ort

    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), platform.processor())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if f" {f}" in flags]
    from . import blas

    lib = blas.backend()
    return {"cpu": model, "cpu_count": os.cpu_count(), "isa": isa, "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers(),
            "numpy_blas": os.path.basename(lib) if lib else "not controlled by runtime.blas"}


def measure(path: str | Path, device: str = "auto", threads: int | None = None, repeats: int = 50,
            batch_size: int = 32, add_examples: int = 5, seed: int = 0) -> dict:
    """Cold start, batch-1 latency, batch throughput, peak RSS, sizes and add-class of the bundle at ``path``.

    ``cold_start`` is load + first prediction in this process (the optimised-graph
    cache is used if present, see ``edgecl_runtime.session``); ``load_uncached`` /
    ``load_cached`` time a load without / with that cache.
    """
    from .bundle import Bundle

    path = Path(path)
    rng = np.random.default_rng(seed)
    rss_start = peak_rss_mib()
    t0 = time.perf_counter()
    b = Bundle.load(path, device=device, threads=threads)
    t_load = time.perf_counter() - t0
    _, h, w = b.input_size
    one = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    b.predict(one)
    cold = time.perf_counter() - t0
    out: dict = {
        "bundle": str(path),
        "backbone": b.manifest["backbone"]["name"],
        "precision": b.manifest["backbone"].get("precision", "fp32"),
        "input_size": list(b.input_size),
        "num_classes": len(b.classes),
        "device": b.device,
        "providers": b.providers,
        "threads": threads,
        "batch_size": batch_size,
        "session_source": b.session_source,
        "cold_start_s": cold,
        "load_s": t_load,
    }
    out.update(_batch1(b, one, rng, repeats))
    # the device case (one camera frame at a time): the process's peak so far, before any batch
    out["peak_rss_batch1_mib"] = peak_rss_mib()
    out.update(_batched(b, rng, batch_size, max(5, repeats // 5)))
    # after the batch too (activations of batch_size images), before add-class loads a second copy
    out["peak_rss_mib"] = peak_rss_mib()
    out["rss_at_start_mib"] = rss_start
    out.update(bundle_sizes(path))
    out["rss_target_mib"] = 2 * out["onnx_bytes"] / (1 << 20) + 100
    for source in ("uncached", "cached"):
        t0 = time.perf_counter()
        Bundle.load(path, device=device, threads=threads, cache=source == "cached")
        out[f"load_{source}_s"] = time.perf_counter() - t0
    out["add_class"] = measure_add_class(path, device, threads, add_examples, rng)
    return out


def _batch1(b, one: np.ndarray, rng, repeats: int) -> dict:
    """Batch-1 timings: predict, backbone alone vs backbone + head, preprocessing (also of a 480x640 frame)."""
    x1, view, out = b.preprocess(one), b._view, {}
    out["predict_b1"] = timings(lambda: b.predict(one), repeats)
    # backbone (+ fixed transform) alone vs backbone + head scoring, in alternating blocks (a busy machine slows both)
    out.update(interleaved({"embed_b1": lambda: b._forward(x1, view, "features"),
                            "scores_b1": lambda: b._forward(x1, view, "scores")}, repeats))
    out["head_overhead_b1"] = out["scores_b1"]["p50_ms"] / out["embed_b1"]["p50_ms"]
    out["preprocess_b1"] = timings(lambda: b.preprocess(one), repeats)
    frame = rng.integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    out["preprocess_480x640_b1"] = timings(lambda: b.preprocess(frame), max(5, repeats // 5))
    return out


def _batched(b, rng, batch_size: int, repeats: int) -> dict:
    """Timings of one batch of ``batch_size`` random images: predict, embed, preprocess, throughput."""
    _, h, w = b.input_size
    batch = rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8)  # made after batch 1: not batch-1 memory
    xb, view, out = b.preprocess(batch), b._view, {}
    out[f"predict_b{batch_size}"] = timings(lambda: b.predict(batch), repeats)
    out[f"embed_b{batch_size}"] = timings(lambda: b._forward(xb, view, "features"), repeats)
    out[f"preprocess_b{batch_size}"] = timings(lambda: b.preprocess(batch), repeats)
    out["throughput_images_per_s"] = batch_size / (out[f"predict_b{batch_size}"]["p50_ms"] / 1e3)
    return out


def measure_add_class(path: Path, device: str, threads: int | None, k: int, rng, rounds: int = 5) -> dict:
    """add-class with ``k`` examples on a temporary copy: total, embedding, update (persisted), head update alone."""
    from .bundle import Bundle

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(path, copy)
        b = Bundle.load(copy, device=device, threads=threads)
        _, h, w = b.input_size
        results, head_only = [], []
        for i in range(rounds + 1):
            x = rng.integers(0, 256, (k, h, w, 3), dtype=np.uint8)
            emb = b.embed(x)
            t0 = time.perf_counter()
            b.head.with_examples(None, emb)  # the head's update, in memory only
            head_only.append(time.perf_counter() - t0)
            results.append(b.add_class(f"bench-{i}", x))
        results, head_only = results[1:], head_only[1:]  # first round warms caches
        med = lambda v: float(np.median(v)) * 1e3  # noqa: E731
        return {
            "examples": k,
            "total_ms": med([r.seconds for r in results]),
            "embed_ms": med([r.embed_seconds for r in results]),
            "update_ms": med([r.update_seconds for r in results]),
            "head_update_ms": med(head_only),
            "rounds": rounds,
        }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgecl_runtime.benchmark", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    result = measure(args.bundle, args.device, args.threads, args.repeats, args.batch_size)
    result["machine"] = machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
