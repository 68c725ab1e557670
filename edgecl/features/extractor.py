"""The embedding service the experiment owns: ``FeatureExtractor.embed(module, dataset, indices)``.

Learners' training embeddings (``Learner.embed``) and the evaluation after
every task go through one ``FeatureExtractor``. For a module whose state no
longer changes in the run (``frozen=True``: a frozen backbone, a first-session
adaptation after its training) it embeds the whole data split once and keeps
the matrix, row ``i`` = image ``i``, in an ``EmbeddingStore`` (on disk under
the cache directory, written batch by batch as it is computed, memory-mapped),
keyed by

* the module's state: a digest of its structure and every parameter and buffer
  (so fine-tuning, a PEFT module's training or other weights give other keys),
* the preprocessing (input size, mean, std, runtime preprocessing version),
* the data: a digest of the split's images (so another data seed, another
  source or another split gives another key); for a streamed split
  (``edgecl.data.stream``: images on disk) a digest of its files' paths, sizes
  and modification times and of the rows it selects,
* the engine that computed it and the torch version.

Later calls, other learners of a grid and other processes read the rows they
need. A module that is still changing (``frozen=False``: EASE's per-task
adapters, SLCA's slow learner, prompt pools) bypasses the store: exactly the
requested rows are computed with eager torch. Without a store
(``cache_dir=None``) every call computes its rows (with ``engine="torch"``:
the behaviour before the cache existed).

The engine (``edgecl.features.engines``): ``auto`` measures the parity-checked
candidates on a sample batch of a split of at least ``AUTO_MIN_IMAGES`` images
and keeps the fastest (smaller jobs use eager torch); the choice is recorded in
the store so that later processes use the same engine for the same module
(processes measuring at the same time wait for the first one's choice).
Preprocessing of the next batch runs on a worker thread while the engine runs
the current one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .engines import ENGINE_CHOICES, ENGINES, Engine, build_engine, pick_engine, torch_engine
from .store import EmbeddingStore

AUTO_MIN_IMAGES = 1024  # below this, building and timing engines costs more than it saves
SAMPLE_BATCH = 16


def module_digest(module: nn.Module) -> str:
    """Digest of ``module``'s structure (sub-module types) and every parameter and buffer."""
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__};".encode())
    for name, t in module.state_dict(keep_vars=False).items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def images_digest(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{images.dtype}:{images.shape};".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``<edgecl cache dir>/embeddings`` (``$EDGECL_CACHE_DIR``, see ``edgecl.pretrain.checkpoint.cache_dir``)."""
    from ..paths import cache_dir

    return cache_dir() / "embeddings"


class FeatureExtractor:
    """Embeddings of preprocessed images through a module, computed once per key (see module doc)."""

    def __init__(self, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float], *,
                 batch_size: int = 128, engine: str = "auto", cache_dir: str | Path | None = None,
                 device: str = "cpu", threads: int | None = None):
        if engine not in ENGINE_CHOICES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if device != "cpu" and engine not in ("auto", "torch"):
            raise ConfigError(f"engine {engine!r} runs on the CPU; use engine='torch' for device {device!r}")
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self.batch_size, self.engine, self.device, self.threads = batch_size, engine, device, threads
        self.store = EmbeddingStore(cache_dir) if cache_dir is not None else None
        self.engines_used: dict[str, str] = {}  # module digest -> engine kind
        self.engine_timings: dict[str, dict] = {}  # module digest -> auto's measurements
        self._matrices: dict[str, np.ndarray] = {}
        self._engines: dict[tuple[str, str], Engine] = {}
        self._data_keys: dict[int, tuple[np.ndarray, str]] = {}
        self._state_keys: dict[int, tuple[tuple, str]] = {}

    # ------------------------------------------------------------------ API
    def embed(self, module: nn.Module, dataset, indices=None, *, frozen: bool = True,
              progress: Callable | None = None) -> torch.Tensor:
        """``(len(indices), D)`` float32 embeddings of ``dataset.images[indices]`` (all images if ``None``)."""
        idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if not frozen or (self.store is None and self.engine == "torch"):
            return torch.from_numpy(self._run(torch_engine(module, self.device), dataset.images, idx, progress))
        if self.store is None:
            engine = self._engine(self.engine_kind(module, self.state_key(module), dataset), module, dataset)
            return torch.from_numpy(self._run(engine, dataset.images, idx, progress))
        matrix = self.matrix(module, dataset, progress)
        return torch.from_numpy(self.store.rows(matrix, idx))

    def matrix(self, module: nn.Module, dataset, progress: Callable | None = None) -> np.ndarray:
        """Embeddings of the whole split, row ``i`` = image ``i``, from the store or computed into it."""
        state = self.state_key(module)
        kind = self.engine_kind(module, state, dataset)
        key = hashlib.blake2b(
            f"{state}|{self.preprocessing_key()}|{self.data_key(dataset.images)}|{kind}|{torch.__version__}".encode(),
            digest_size=20,
        ).hexdigest()
        if key not in self._matrices:
            full = np.arange(len(dataset))
            compute = lambda: self._batches(self._engine(kind, module, dataset), dataset.images, full, progress)  # noqa: E731
            self._matrices[key] = self.store.get_or_create(key, compute)
        return self._matrices[key]

    def store_counts(self) -> dict[str, int] | None:
        """Matrices read from the store (``hits``), computed into it (``misses``), invalid files rebuilt."""
        s = self.store
        return None if s is None else {"hits": s.hits, "misses": s.misses, "rebuilt": s.rebuilt}

    def summary(self) -> str:
        engines = ", ".join(sorted(set(self.engines_used.values()))) or "torch"
        counts = self.store_counts()
        cache = "no cache" if counts is None else f"cache hits {counts['hits']}, misses {counts['misses']}"
        return f"engine {engines}, {cache}" + (f", {counts['rebuilt']} invalid file(s) rebuilt" if counts and counts["rebuilt"] else "")

    # ----------------------------------------------------------------- keys
    def preprocessing_key(self) -> str:
        from edgecl_runtime import __version__ as runtime_version

        return f"{self.input_size}:{self.mean}:{self.std}:runtime-{runtime_version}"

    def data_key(self, images: np.ndarray) -> str:
        """Digest of the images' bytes; a streamed set's (``edgecl.data.stream.StreamImages``) own key,
        computed from its files without reading the images."""
        if hasattr(images, "cache_key"):
            return images.cache_key
        found = self._data_keys.get(id(images))
        if found is None or found[0] is not images:
            found = (images, images_digest(images))
            self._data_keys[id(images)] = found
        return found[1]

    def state_key(self, module: nn.Module) -> str:
        """``module_digest``, recomputed only when a tensor of the module was replaced or modified in place."""
        stamp = tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())
        found = self._state_keys.get(id(module))
        if found is None or found[0] != stamp:
            found = (stamp, module_digest(module))
            self._state_keys[id(module)] = found
        return found[1]

    # -------------------------------------------------------------- engines
    def engine_kind(self, module: nn.Module, state: str, dataset) -> str:
        """The engine for ``module``: forced, recorded earlier (in this process or the store), or measured."""
        if state not in self.engines_used:
            self.engines_used[state] = self._choose_engine(module, state, dataset)
        return self.engines_used[state]

    def _choose_engine(self, module: nn.Module, state: str, dataset) -> str:
        if self.engine != "auto":
            return self.engine
        if self.device != "cpu" or len(dataset) < AUTO_MIN_IMAGES:
            return "torch"
        if self.store is None:
            return self._measure_engine(module, state, dataset)
        record = f"engine-{state}-t{self._threads()}-{torch.__version__}"
        with self.store._lock(record):  # concurrent processes on one store wait for one measurement and share it
            kind = self.store.read_text(record)
            if kind not in ENGINES:
                kind = self._measure_engine(module, state, dataset)
                self.store.write_text(record, kind)
        return kind

    def _measure_engine(self, module: nn.Module, state: str, dataset) -> str:
        kind, engine, self.engine_timings[state] = pick_engine(module, self._sample(dataset), self._threads())
        self._engines[(state, kind)] = engine
        return kind

    def _engine(self, kind: str, module: nn.Module, dataset) -> Engine:
        """Engine ``kind`` for ``module`` (built once per module state)."""
        key = (self.state_key(module), kind)
        if key not in self._engines:
            self._engines[key] = build_engine(kind, module, self._sample(dataset), self._threads(), self.device)
        return self._engines[key]

    def _threads(self) -> int:
        return int(self.threads or torch.get_num_threads())

    def _sample(self, dataset) -> np.ndarray:
        from ..data.dataset import preprocess_rows

        return preprocess_rows(dataset.images, np.arange(min(SAMPLE_BATCH, len(dataset))), self.input_size, self.mean,
                               self.std)

    # -------------------------------------------------------------- batches
    def _run(self, engine: Engine, images: np.ndarray, idx: np.ndarray, progress: Callable | None) -> np.ndarray:
        """``engine`` over ``images[idx]`` in batches, as one matrix."""
        out = list(self._batches(engine, images, idx, progress))
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)

    def _batches(self, engine: Engine, images, idx: np.ndarray, progress: Callable | None) -> Iterator[np.ndarray]:
        """``engine`` over ``images[idx]``, batch by batch; the next batch is read and preprocessed on a
        worker thread while the engine runs the current one."""
        from ..data.dataset import prefetched, preprocess_rows

        def prep(i: int) -> np.ndarray:
            return preprocess_rows(images, idx[i : i + self.batch_size], self.input_size, self.mean, self.std)

        starts = range(0, len(idx), self.batch_size)
        batches = prefetched(prep, starts)
        if progress:  # the bar needs a length: it runs over the batch starts, in step with the batches
            batches = (x for _, x in zip(progress(starts), batches))
        for x in batches:
            yield np.asarray(engine(x), dtype=np.float32)
