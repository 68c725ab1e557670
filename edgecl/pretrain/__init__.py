"""Pre-training of the embedded backbones: recipes, tasks, trainer, cached checkpoints.

* :class:`Recipe` (``recipe``): architecture + data + hyper-parameters, frozen;
  :func:`config_hash` keys the cache.
* ``tasks``: what a run trains on (``shapes-factors``, ``glyphs``).
* :func:`pretrain` (``trainer``): deterministic supervised training -> backbone + metrics.
* ``checkpoint``: atomic safetensors files with their recipe, the hash-keyed cache,
  :func:`ensure_pretrained` (cache hit or train).

``edgecl pretrain`` is the command line; ``edgecl.zoo.embedded`` names the
recipes of the embedded backbones and ``edgecl.zoo.create_backbone`` builds the backbones a
recipe names (``resolve=``).
"""

from .checkpoint import cache_dir, cache_path, ensure_pretrained, read_metadata, save_checkpoint
from .recipe import Recipe, config_hash
from .tasks import TASKS, Resolve, make_task
from .trainer import PretrainResult, pretrain

__all__ = [
    "PretrainResult",
    "Recipe",
    "Resolve",
    "TASKS",
    "cache_dir",
    "cache_path",
    "config_hash",
    "ensure_pretrained",
    "make_task",
    "pretrain",
    "read_metadata",
    "save_checkpoint",
]
