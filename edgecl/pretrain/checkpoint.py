"""Pre-trained checkpoints: safetensors files with their recipe, cached by config hash.

A checkpoint holds the backbone's ``num_classes=0`` state dict (so timm's
pretrained-file loader and ``build_timm`` take it as is) and, as metadata, the
recipe JSON, its config hash and the run's final metrics. Files are written
atomically (temp file in the same directory, fsync, rename): concurrent makers
or a crash never leave a half-written file under the final name.

Cache: ``<cache_dir>/backbones/<name>-<config hash>.safetensors``, with
``cache_dir()`` = ``$EDGECL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgecl``, else
``~/.cache/edgecl``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from safetensors import safe_open
from safetensors.torch import save_file

from ..paths import cache_dir  # noqa: F401  (re-exported: edgecl.pretrain.cache_dir)
from .recipe import Recipe, config_hash
from .trainer import Resolve, pretrain

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def checkpoint_name(name: str, recipe: Recipe) -> str:
    return f"{name}-{config_hash(recipe)}.safetensors"


def cache_path(name: str, recipe: Recipe) -> Path:
    """Where the cache keeps ``name`` pre-trained with ``recipe``."""
    return cache_dir() / "backbones" / checkpoint_name(name, recipe)


def save_checkpoint(
    model: nn.Module, path: str | Path, recipe: Recipe, metrics: dict[str, float] | None = None, dtype: str = "fp32",
    threads: int | None = None,
) -> Path:
    """Atomically write ``model``'s state dict (floating tensors cast to ``dtype``) with its recipe.

    The metadata holds nothing that depends on the machine's speed (the metrics' wall time
    ``seconds`` is left out), so the same recipe, threads, torch build and CPU type give the
    same file byte for byte.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint file must end in .safetensors, got {path}")
    state = {
        k: (v.detach().to(DTYPES[dtype]) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {
        "edgecl_recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "edgecl_config_hash": config_hash(recipe),
        "edgecl_metrics": json.dumps({k: v for k, v in (metrics or {}).items() if k != "seconds"}, sort_keys=True),
        "edgecl_threads": str(threads),
        "torch_version": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        _sort_metadata(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _sort_metadata(path: str | Path) -> None:
    """Rewrite the safetensors header with its metadata keys sorted, in place.

    safetensors writes ``__metadata__`` from a hash map whose order changes from one process to
    the next (measured: two bit-identical trainings gave files that differed only there), so
    without this the same weights would not give the same file. Only the order changes: the
    header keeps its length, so the tensor offsets stay valid.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        new = body.ljust(n)  # safetensors pads its header with spaces
        if len(new) != n or json.loads(new.decode("utf-8")) != header:
            raise RuntimeError(f"could not canonicalise the safetensors header of {path}")
        f.seek(8)
        f.write(new)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a checkpoint (recipe JSON, config hash, metrics)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


CACHE_THREADS = 1  # torch threads of a checkpoint made on first use (see ensure_pretrained)


def ensure_pretrained(
    name: str, recipe: Recipe, progress: Callable | None = None, threads: int = CACHE_THREADS,
    resolve: Resolve | None = None,
) -> Path:
    """The cached checkpoint of ``name`` for ``recipe``, training and caching it if absent.

    The cache key is the recipe alone, so the weights must not depend on the caller:
    they are trained with ``CACHE_THREADS`` torch threads whatever the process uses
    (float sums split over another number of threads round differently, and the
    weights drift apart over training). Other checkpoints are made from them (the
    embedded ViT's stem and distillation target come from ``edgecl-resnet10t-glyphs``),
    so this is what makes ``edgecl pretrain --threads 1`` on a fresh machine give the
    committed file byte for byte. ``resolve`` builds the backbones the recipe names (see ``pretrain``).
    """
    path = cache_path(name, recipe)
    if path.is_file():
        return path
    result = pretrain(recipe, threads=threads, progress=progress, resolve=resolve)
    return save_checkpoint(result.model, path, recipe, result.metrics, threads=threads)
