"""Named CLIP models: the embedded tiny CLIP and where its weights come from (nothing is downloaded; open_clip
hub names ``hf-hub:ORG/REPO`` load from the Hugging Face cache through ``edgecl.zoo.hub``).

``edgecl-clip-tiny`` (``CLIP_MODELS``): open_clip ``CLIP`` = the locked image trunk of
``edgecl-vit-tiny`` (its committed, sha256-checked weights) + a byte-level text tower pre-trained by
``edgecl.pretrain.clip`` on rendered glyphs and emoji paired with their Unicode names (``RECIPE``).
The text-side weights (text tower, ``logit_scale``, prototype map) are one safetensors file:
committed in ``weights/`` (``SHIPPED``, sha256-checked; ``SHIPPED_COMMAND`` reproduces it) or, for
a recipe that is not committed, made on first use and cached by the recipe's config hash.

``load_clip(name)`` gives the :class:`~edgecl.clip.ClipModel`; ``edgecl.zoo.create_backbone(name)``
its image tower as a backbone (a ``ClipBackbone`` carrying the model as ``.clip``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..backbones import BackboneError, build_timm, load_weights, sha256_of
from ..clip.model import TINY, ClipConfig, ClipModel, apply_prototype_map, from_config, load_state
from ..pretrain import Recipe, cache_path, save_checkpoint
from ..pretrain.checkpoint import CACHE_THREADS, checkpoint_name
from ..pretrain.clip import pretrain_clip
from .hub import is_hub_name, open_clip_model, resolve
from .embedded import WEIGHTS_DIR, ensure_embedded_weights

IMAGE_TOWER = "edgecl-vit-tiny"  # the embedded backbone whose trunk is the tiny CLIP's image tower
RECIPE = Recipe(
    timm_name=TINY.trunk[0],
    model_kwargs={"name": TINY.name, "embed_dim": TINY.embed_dim, "text": dict(TINY.text)},
    task="clip-names",
    task_kwargs={"glyph_per_class": 6, "emoji_per_class": 10, "emoji_exclude": ["emoji:100", "emoji:200", "emoji:500"],
                 "ridge": 0.1},
    init={"visual.trunk": IMAGE_TOWER},
    steps=600,
    batch_size=128,
    lr=1e-3,
    weight_decay=0.05,
    warmup_frac=0.05,
    clip_grad=1.0,
)
CLIP_MODELS: dict[str, tuple[ClipConfig, Recipe]] = {TINY.name: (TINY, RECIPE)}
# Committed text-side weights: name -> sha256 of WEIGHTS_DIR/<name>-<config hash>.safetensors.
SHIPPED: dict[str, str] = {
    "edgecl-clip-tiny": "2ca6a7ce638d8053e6573b4118113d4ad99f67b89dc49bcf8ae1fe8316d6612f",
}
SHIPPED_COMMAND = "edgecl pretrain --arch {name} --threads 1 --dtype fp16 --out {path}"


class _Tensors:
    """A state dict in the shape ``save_checkpoint`` takes (anything with ``state_dict()``)."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def text_state(clip: ClipModel) -> dict:
    """The tensors of the text-side file: every model tensor outside ``visual.``, and the prototype map."""
    state = {k: v for k, v in clip.model.state_dict().items() if not k.startswith("visual.")}
    if clip.prototype_map is not None:
        state.update({f"prototype_map.{k}": v for k, v in clip.prototype_map.state_dict().items()})
    return state


def _recipe(name: str) -> Recipe:
    if name not in CLIP_MODELS:
        raise BackboneError(f"unknown CLIP model {name!r}; known: {', '.join(CLIP_MODELS)} (or edgecl.clip.load "
                            "with an open_clip config and a local weights file)")
    return CLIP_MODELS[name][1]


def weights_path(name: str) -> Path:
    recipe = _recipe(name)
    return WEIGHTS_DIR / checkpoint_name(name, recipe) if name in SHIPPED else cache_path(name, recipe)


def weights_status(name: str) -> str:
    """``committed``, ``missing`` (committed but absent), ``cached`` or ``made on first use`` (the text side)."""
    path = weights_path(name)
    if name in SHIPPED:
        return "committed" if path.is_file() else "missing"
    return "cached" if path.is_file() else "made on first use"


def make_weights(name: str, path: Path, threads: int | None = CACHE_THREADS, dtype: str = "fp32",
                 log: Callable[[str], None] | None = None, recipe: Recipe | None = None) -> tuple[Path, dict]:
    """Pre-train ``name``'s text side (``recipe``, default its own) and write it to ``path``; ``(path, metrics)``."""
    recipe = recipe or _recipe(name)
    trunk = build_timm(TINY.trunk[0], TINY.trunk[1], ensure_embedded_weights(recipe.init["visual.trunk"])).state_dict()
    result = pretrain_clip(recipe, trunk, threads=threads, log=log)
    save_checkpoint(_Tensors(text_state(result.clip)), path, recipe, result.metrics, dtype=dtype, threads=threads)
    return path, result.metrics


def ensure_text_weights(name: str) -> Path:
    """The verified text-side file of ``name``: committed (sha256-checked) or made on first use and cached."""
    path = weights_path(name)
    if name not in SHIPPED:
        return path if path.is_file() else make_weights(name, path)[0]
    command = SHIPPED_COMMAND.format(name=name, path=path)
    if not path.is_file():
        raise BackboneError(f"the committed weights of {name} are missing: {path}; reproduce them with `{command}`")
    digest = sha256_of(path)
    if digest != SHIPPED[name]:
        raise BackboneError(f"{path} has sha256 {digest}, expected {SHIPPED[name]}: the committed weights of {name} "
                            f"were modified; restore them (git checkout) or reproduce them with `{command}`")
    return path


def load_clip(name: str = TINY.name, text_weights: str | Path | None = None) -> ClipModel:
    """The named CLIP model: image trunk from ``edgecl-vit-tiny``'s weights, text side from its file (or from
    ``text_weights``, e.g. a file ``edgecl pretrain`` wrote), both loaded strictly; a hub name ``hf-hub:ORG/REPO``
    is an open_clip CLIP from the Hugging Face cache (``edgecl.zoo.hub``)."""
    if is_hub_name(name):
        if text_weights is not None:
            raise BackboneError(f"{name} brings both towers from the hub; text_weights is for {', '.join(CLIP_MODELS)}")
        return open_clip_model(resolve(name))
    cfg, recipe = CLIP_MODELS.get(name, (None, _recipe(name)))
    clip = from_config(cfg, seed=0)
    image_path = ensure_embedded_weights(recipe.init["visual.trunk"])
    load_weights(clip.visual.trunk, cfg.trunk[0], image_path)
    path = Path(text_weights) if text_weights is not None else ensure_text_weights(name)
    apply_prototype_map(clip, load_state(clip.model, path, exclude="visual."), str(path))
    clip.weights = {"image": f"embedded:{recipe.init['visual.trunk']}", "image_sha256": sha256_of(image_path),
                    "text": f"embedded:{name}" if text_weights is None else f"file:{path.name}", "text_sha256": sha256_of(path)}
    return clip.eval()
