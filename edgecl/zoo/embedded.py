"""The embedded backbones: small timm models whose weights edgecl makes itself (nothing is downloaded).

``EMBEDDED`` maps each name to its :class:`~edgecl.pretrain.Recipe`; ``edgecl.pretrain`` makes
the weights (``edgecl pretrain`` on the command line):

* ``edgecl-resnet10t`` (the default): timm ``resnet10t`` at 32x32, a short supervised warm-up on
  the shapes generator's factors (shape, colour), never its 100 benchmark classes; made on first use.
* ``edgecl-resnet10t-glyphs``: ``resnet10t`` at 32x32 pre-trained on 1,000 characters of the glyph
  pre-training corpus (disjoint from every ``glyphs`` benchmark class); made on first use.
* ``edgecl-vit-tiny``: the hybrid ViT ``edgecl_vit_tiny_r10t`` (``edgecl.backbones.vit_hybrid``)
  pre-trained on the same corpus plus distillation of ``edgecl-resnet10t-glyphs``, its stem
  initialised from that CNN. Its weights are committed (``weights/``, fp16) and their sha256 is
  checked on load; ``SHIPPED_COMMAND`` reproduces the file.

Weights made on first use are cached by the recipe's config hash. Measurements and the history
of these recipes: ``docs/notes-embedded-backbones.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..backbones import Backbone, BackboneError, sha256_of
from ..pretrain import Recipe, cache_path, ensure_pretrained
from ..pretrain.checkpoint import checkpoint_name

EMBEDDED: dict[str, Recipe] = {
    "edgecl-resnet10t": Recipe(timm_name="resnet10t"),
    "edgecl-resnet10t-glyphs": Recipe(
        timm_name="resnet10t",
        task="glyphs",
        task_kwargs={"num_classes": 1000, "source": "matplotlib"},
        steps=1500,
        batch_size=64,
        lr=1e-3,
        warmup_frac=0.05,
        clip_grad=1.0,
    ),
    "edgecl-vit-tiny": Recipe(
        timm_name="edgecl_vit_tiny_r10t",  # hybrid ViT-tiny: resnet10t stem to layer2, then 6 ViT blocks
        model_kwargs={"img_size": 32, "depth": 6, "num_heads": 3, "global_pool": "token"},
        task="glyphs",
        # classification of the disjoint glyph corpus + distillation of edgecl-resnet10t-glyphs' embedding
        task_kwargs={"num_classes": 1000, "source": "matplotlib", "teacher": "edgecl-resnet10t-glyphs"},
        init={"patch_embed.backbone": "edgecl-resnet10t-glyphs"},
        steps=3000,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.05,
        warmup_frac=0.05,
        label_smoothing=0.1,
        clip_grad=1.0,
    ),
}
DEFAULT_BACKBONE = "edgecl-resnet10t"

# Committed checkpoints: name -> sha256 of ``WEIGHTS_DIR/<name>-<config hash>.safetensors``.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED: dict[str, str] = {
    "edgecl-vit-tiny": "62942515f149c70bfb9d46cd3701115d6d259baf4312b9af6056e79ba6d09f35",
}
SHIPPED_COMMAND = "edgecl pretrain --arch {name} --threads 1 --dtype fp16 --out {path}"


def weights_path(name: str) -> Path:
    """Where the weights of embedded backbone ``name`` live: the committed file or the cache."""
    recipe = _recipe(name)
    if name in SHIPPED:
        return WEIGHTS_DIR / checkpoint_name(name, recipe)
    return cache_path(name, recipe)


def weights_status(name: str) -> str:
    """``committed`` (shipped in ``weights/``), ``missing`` (shipped but absent), ``cached`` or ``made on first use``."""
    path = weights_path(name)
    if name in SHIPPED:
        return "committed" if path.is_file() else "missing"
    return "cached" if path.is_file() else "made on first use"


def _recipe(name: str) -> Recipe:
    if name not in EMBEDDED:
        raise BackboneError(f"unknown embedded backbone {name!r}; known: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


def ensure_embedded_weights(
    name: str, progress: Callable | None = None, resolve: Callable[..., Backbone] | None = None
) -> Path:
    """Path of the weights of embedded backbone ``name``: verified if committed, else made on first use
    (``resolve`` builds the backbones its recipe names: ``edgecl.zoo.create_backbone``)."""
    recipe = _recipe(name)
    if name not in SHIPPED:
        return ensure_pretrained(name, recipe, progress, resolve=resolve)
    path = weights_path(name)
    if not path.is_file():
        raise BackboneError(
            f"the committed weights of {name} are missing: {path}; reproduce them with "
            f"`{SHIPPED_COMMAND.format(name=name, path=path)}`"
        )
    digest = sha256_of(path)
    if digest != SHIPPED[name]:
        raise BackboneError(
            f"{path} has sha256 {digest}, expected {SHIPPED[name]}: the committed weights of {name} were modified; "
            f"restore them (git checkout) or reproduce them with `{SHIPPED_COMMAND.format(name=name, path=path)}`"
        )
    return path
