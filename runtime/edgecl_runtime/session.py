"""onnxruntime sessions for a bundle: providers, session options, optimised-model cache.

What is chosen for the device, and why:

* **providers** (``select_providers``): CUDA first when onnxruntime offers it
  (``device="auto"`` or ``"cuda"``), else CPU. Pure function of the device
  string and the available providers, so the CUDA path is testable on CPU.
* **session options** (``session_options``): full graph optimisation
  (constant folding, fusions, NCHWc layouts on CPU), ``intra_op_num_threads``
  (``threads=None`` lets onnxruntime use one thread per physical core),
  sequential execution (the backbone is a chain: parallel execution only adds
  scheduling overhead).
* **optimised-model cache** (``create_session``): optimising a graph costs
  time at every load. The optimised graph is saved once under
  ``BUNDLE/.ort-cache/`` and later loads open it with optimisation disabled.
  The cache key is the onnxruntime version, the providers, the optimisation
  level, the CPU architecture and instruction-set flags and the sha256 of the source model, so an
  upgraded onnxruntime, another device or a new backbone never reuse it. The
  cache file is written to a temporary name and renamed (atomic), and its own
  sha256 is recorded next to it: a stale, truncated or corrupt cache is
  deleted and rebuilt, never trusted and never an error. The cache is not part
  of the bundle: ``manifest.json`` does not list it, checksums ignore it, and
  deleting the directory is always safe. A read-only bundle simply runs
  without a cache.
* **IO binding** (``use_io_binding``): on CUDA, outputs are bound so that
  onnxruntime does not allocate and copy through intermediate buffers per
  call. On CPU it buys nothing, so it is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # the flavour is the installer's choice: edgecl-runtime[cpu] or [gpu]
    ort = None

from . import storage
from .errors import (
    CorruptBundleError,
    DeviceUnavailableError,
    EdgeclRuntimeError,
    InvalidInputError,
    MissingDependencyError,
)
from .manifest import sha256_file

log = logging.getLogger("edgecl.runtime")

DEVICES = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
CACHE_DIR = ".ort-cache"
GRAPH_LEVELS = {  # names of onnxruntime.GraphOptimizationLevel members
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


INSTALL_ORT = "pip install 'edgecl-runtime[cpu]' (CPU) or 'edgecl-runtime[gpu]' (CUDA; never both)"


def require_onnxruntime():
    """The ``onnxruntime`` module, or ``MissingDependencyError`` naming the install command."""
    if ort is None:
        raise MissingDependencyError(f"onnxruntime is not installed: {INSTALL_ORT}")
    return ort


def select_providers(device: str, available: Sequence[str] | None = None) -> list[str]:
    """Execution providers for ``device`` (``auto`` | ``cpu`` | ``cuda``), best first."""
    if device not in DEVICES:
        raise InvalidInputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = list(require_onnxruntime().get_available_providers() if available is None else available)
    if device == "cpu":
        return [CPU_EP]
    if CUDA_EP in available:
        return [CUDA_EP, CPU_EP]
    if device == "cuda":
        raise DeviceUnavailableError(
            f"device='cuda' but onnxruntime offers only {available}; install onnxruntime-gpu "
            "(pip install 'edgecl-runtime[gpu]' in place of [cpu]) with a matching CUDA, or use device='cpu'"
        )
    return [CPU_EP]


def use_io_binding(providers: Sequence[str]) -> bool:
    """IO binding pays off when the first provider keeps tensors off the host (CUDA)."""
    return bool(providers) and providers[0] == CUDA_EP


def session_options(threads: int | None = None, level: str = "all") -> ort.SessionOptions:
    """Session options for a backbone: graph optimisation ``level`` and ``threads`` intra-op threads."""
    if threads is not None and (not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1):
        raise InvalidInputError(f"threads must be a positive integer or None, got {threads!r}")
    if level not in GRAPH_LEVELS:
        raise InvalidInputError(f"graph optimisation level must be one of {', '.join(GRAPH_LEVELS)}, got {level!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[level])
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: the NCHWc "optimized model may not run elsewhere" warning is expected
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def _cpu_features() -> str:
    """The CPU's instruction-set flags (Linux), so that NCHWc/AVX-specific graphs are not reused on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return hashlib.sha256(line.split(":", 1)[1].strip().encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor()


def cache_key(model_sha256: str, providers: Sequence[str], level: str) -> str:
    """What an optimised graph depends on; a change of any part makes a new cache file."""
    parts = [ort.__version__, ",".join(providers), level, platform.machine(), _cpu_features(), model_sha256]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _cached_model(cache_dir: Path, key: str) -> Path | None:
    """The cached optimised model for ``key`` if both files are regular and its recorded sha256 matches, else None."""
    model, meta = cache_dir / f"{key}.onnx", cache_dir / f"{key}.json"
    try:
        storage.check_regular(model)
        info = json.loads(storage.read_regular(meta, limit=1 << 16).decode("utf-8"))
        if info.get("bytes") == model.stat().st_size and info.get("sha256") == sha256_file(model):
            return model
    except (OSError, ValueError, EdgeclRuntimeError):
        pass
    return None


def _cache_dir(model_path: Path, create: bool) -> Path | None:
    """The bundle's ``.ort-cache`` directory if it is a real directory (made when ``create``), else None."""
    cache_dir = model_path.parent / CACHE_DIR
    with contextlib.suppress(OSError):
        if create and not os.path.lexists(cache_dir):
            os.mkdir(cache_dir)
        if stat.S_ISDIR(os.lstat(cache_dir).st_mode):  # a symbolic link is never followed
            return cache_dir
    return None


def _drop(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _prune(cache_dir: Path, keep: str, source: str, providers: list[str]) -> None:
    """Drop cache entries of the same model and providers under another key (an older onnxruntime, a new backbone)."""
    for meta in cache_dir.glob("*.json"):
        if meta.stem == keep:
            continue
        try:
            info = json.loads(storage.read_regular(meta, limit=1 << 16).decode("utf-8"))
        except (OSError, ValueError, EdgeclRuntimeError):
            info = {"source": source, "providers": providers}  # unreadable (or a link): stale by definition
        if info.get("source") == source and info.get("providers") == providers:
            _drop(cache_dir / f"{meta.stem}.onnx", meta)


def _write_cache(model_path: Path, providers: list[str], threads: int | None, level: str, cache_dir: Path, key: str):
    """Optimise ``model_path`` into the cache; returns the session it built.

    onnxruntime writes the optimised graph into a fresh private directory (no name in it can be a
    planted link), whose files are then renamed into the cache; the directory is removed whatever
    happens, and those of dead processes are removed first.
    """
    storage.remove_dead_temps(cache_dir, ".build-")
    work = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}.", suffix=storage.TMP_SUFFIX, dir=cache_dir))
    try:
        tmp = work / "model.onnx"
        so = session_options(threads, level)
        so.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        meta = {
            "source": model_path.name,
            "onnxruntime": ort.__version__,
            "providers": providers,
            "level": level,
            "machine": platform.machine(),
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
        storage.write_new_file(work / "meta.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        # model first, then its meta: a reader that sees the meta sees the complete model
        storage.sys_rename(tmp, cache_dir / f"{key}.onnx")
        storage.sys_rename(work / "meta.json", cache_dir / f"{key}.json")
        _prune(cache_dir, keep=key, source=model_path.name, providers=providers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return session


def create_session(
    model_path: str | Path,
    model_sha256: str,
    providers: list[str],
    threads: int | None = None,
    level: str = "all",
    cache: bool = True,
) -> tuple[ort.InferenceSession, str]:
    """An ``InferenceSession`` for ``model_path`` and how it was made: ``cached`` | ``built`` | ``direct``.

    With ``cache``, the optimised graph is read from (or written to) the
    ``.ort-cache`` directory next to the model, see the module doc.
    ``model_sha256`` identifies the source model (the manifest's checksum).
    """
    model_path = Path(model_path)
    try:
        cache_dir = _cache_dir(model_path, create=True) if cache and level != "disable" else None
        if cache_dir is not None:
            key = cache_key(model_sha256, providers, level)
            cached = _cached_model(cache_dir, key)
            if cached is not None:
                try:
                    so = session_options(threads, "disable")
                    return ort.InferenceSession(str(cached), sess_options=so, providers=providers), "cached"
                except Exception:  # noqa: BLE001 - any failure of a cache file means: rebuild it
                    pass
            _drop(cache_dir / f"{key}.onnx", cache_dir / f"{key}.json")
            try:
                return _write_cache(model_path, providers, threads, level, cache_dir, key), "built"
            except Exception as exc:  # noqa: BLE001 - read-only bundle, full disk, any cache failure: no cache
                log.info("running %s without the optimised-model cache: %s", model_path, exc)
        so = session_options(threads, level)
        return ort.InferenceSession(str(model_path), sess_options=so, providers=providers), "direct"
    except (InvalidInputError, DeviceUnavailableError):
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CorruptBundleError(f"cannot load {model_path}: {exc}") from exc


def clear_cache(bundle_dir: str | Path) -> int:
    """Delete a bundle's optimised-model cache (a link in its place is removed, not followed); returns the
    number of entries removed."""
    cache_dir = Path(bundle_dir) / CACHE_DIR
    n = 0
    if cache_dir.is_symlink():
        _drop(cache_dir)
        return 1
    if cache_dir.is_dir():
        for p in cache_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                _drop(p)
            n += 1
        with contextlib.suppress(OSError):
            cache_dir.rmdir()
    return n


class Runner:
    """Runs a session on a batch: plain ``run`` on CPU, IO binding when ``io_binding``.

    ``extra`` feeds the other graph inputs (a single-file model's head state);
    ``output`` names the output to return (default: the first).
    """

    def __init__(self, session, io_binding: bool = False):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.io_binding = io_binding
        self.input_type = session.get_inputs()[0].type  # 'tensor(float)' or 'tensor(float16)'

    def __call__(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None, output: str | None = None) -> np.ndarray:
        return self.run_outputs(x, extra, (output or self.output_name,))[0]

    def run_outputs(self, x: np.ndarray, extra: dict[str, np.ndarray] | None, outputs: tuple[str, ...]) -> list[np.ndarray]:
        """The float32 ``outputs`` of one run on ``x`` (and the ``extra`` inputs)."""
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        feeds = {self.input_name: x, **(extra or {})}
        if not self.io_binding:
            outs = self.session.run(list(outputs), feeds)
        else:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in outputs:
                binding.bind_output(name)  # onnxruntime allocates on the provider's device
            self.session.run_with_iobinding(binding)
            outs = binding.copy_outputs_to_cpu()
        return [o if o.dtype == np.float32 else o.astype(np.float32) for o in outs]
