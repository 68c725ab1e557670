"""Pre-training recipes: architecture + data + hyper-parameters, frozen and hashed.

A :class:`Recipe` is everything that decides the weights a pre-training run
produces. :func:`config_hash` is a short digest of it; the cache of trained
checkpoints is keyed by that hash (``<cache_dir>/backbones/<name>-<hash>.safetensors``),
so changing any field gives a new cache entry instead of stale weights.

What is *not* in the hash: the thread count and the machine. They can change
the floating-point reduction order and so the last bits of the weights, not
what the recipe means (see ``edgecl.pretrain.trainer`` on determinism).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

HASH_CHARS = 12


@dataclass(frozen=True)
class Recipe:
    """A timm architecture and how to pre-train it.

    ``task`` names a pre-training task of ``edgecl.pretrain.tasks`` (what images,
    which labels), configured by ``task_kwargs``. Optimisation: AdamW,
    linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0;
    cross-entropy with optional ``label_smoothing``; gradients clipped to
    ``clip_grad`` (0: off). ``init`` maps a submodule of the model (e.g.
    ``patch_embed.backbone``) to an embedded backbone whose weights initialise it
    before training (every parameter of the submodule must be found by name).
    """

    timm_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "shapes-factors"
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    seed: int = 0
    steps: int = 120
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
    data_seed: int = 1_000_003  # disjoint from the evaluation data seeds (small ints)
    # submodule prefix -> embedded backbone whose weights initialise it (matching parameter names)
    init: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must lie in [0, 1), got {self.warmup_frac}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError("lr must be > 0, weight_decay and clip_grad >= 0")
        if len(self.input_size) != 3 or self.input_size[0] != 3:
            raise ValueError(f"input_size must be (3, H, W), got {self.input_size}")

    @property
    def warmup_steps(self) -> int:
        return max(1, int(self.steps * self.warmup_frac))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"], d["mean"], d["std"] = list(self.input_size), list(self.mean), list(self.std)
        if not d["init"]:
            del d["init"]  # recipes without it keep the config hash they had before the field existed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields: {sorted(unknown)}")
        d = dict(d)
        for key in ("input_size", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def with_(self, **changes) -> "Recipe":
        """A copy with some fields changed (validated like a new recipe)."""
        return replace(self, **changes)


def config_hash(recipe: Recipe) -> str:
    """Short sha256 of the recipe's canonical JSON: any field change gives another hash."""
    text = json.dumps(recipe.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
