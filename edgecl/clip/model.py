"""open_clip CLIP models built from a config and loaded strictly from local files (nothing is downloaded here).

* :data:`TINY`: the embedded tiny CLIP ``edgecl-clip-tiny``: open_clip ``CLIP`` whose image tower is
  the timm trunk of ``edgecl-vit-tiny`` (``TimmModel``, no projection: 192-d pooled [CLS] features at
  32 px) and whose text tower is a 3-layer, 128-wide causal transformer over the byte tokenizer
  (``edgecl_runtime.text``), projected to 192. Its weights: ``edgecl.zoo.clip``.
* :func:`from_config`: any open_clip model config name (``open_clip.list_models()``, e.g. ``ViT-B-32``)
  built with random weights; :func:`load_state` fills a model strictly from a file.
* :func:`from_open_clip_config`: the same from an ``open_clip_config.json`` (what a hub repo of open_clip holds;
  its files are fetched by ``edgecl.zoo.hub``), with its tokenizer (:func:`open_clip_tokenizer`).
* :class:`ClipModel`: the model with its tokenizer, preprocessing and an optional ``prototype_map``
  (text embedding -> class prototype in the image-feature space, fitted after pre-training).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgecl_runtime import text as device_text

from ..backbones import Backbone, BackboneError, BackboneSpec, build_timm, sha256_of
from .._compat import _ensure_torchvision
from ..backbones.base import read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROTOTYPE_MAP = "prototype_map."  # key prefix of the prototype map in a weights file


class ClipError(BackboneError):
    """A CLIP model that cannot be built or loaded: unknown config, missing or mismatching weights."""


@dataclass(frozen=True)
class ClipConfig:
    """An open_clip CLIP architecture: ``open_clip`` names a registered config, else ``trunk``/``text``
    describe the tiny model (a timm image trunk without projection + a byte-tokenizer text tower)."""

    name: str
    embed_dim: int = 192
    open_clip: str | None = None
    trunk: tuple[str, dict[str, Any]] | None = None  # timm name, kwargs of the image trunk
    text: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    @property
    def tokenizer(self) -> dict[str, Any] | None:
        """The byte tokenizer spec (``edgecl_runtime.text``), or ``None`` for open_clip's BPE tokenizer."""
        if self.open_clip is not None:
            return None
        return dict(device_text.BYTES_V1, context_length=int(self.text["context_length"]))


TINY_TRUNK = ("edgecl_vit_tiny_r10t", {"img_size": 32, "depth": 6, "num_heads": 3, "global_pool": "token"})
TINY = ClipConfig(
    name="edgecl-clip-tiny",
    embed_dim=192,
    trunk=TINY_TRUNK,
    text={"context_length": 64, "vocab_size": 259, "width": 96, "heads": 4, "layers": 2},
    input_size=(3, 32, 32),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def _open_clip():
    _ensure_torchvision()  # open_clip imports torchvision.ops: the CPU-torch workaround of edgecl._compat
    try:
        import open_clip
    except ImportError as exc:
        raise ClipError("CLIP models need open_clip: pip install open-clip-torch (or edgecl[clip])") from exc
    return open_clip


def build(cfg: ClipConfig) -> nn.Module:
    """``cfg``'s open_clip ``CLIP`` with random weights (from the current torch RNG)."""
    open_clip = _open_clip()
    if cfg.open_clip is not None:
        if cfg.open_clip not in open_clip.list_models():
            raise ClipError(f"unknown open_clip config {cfg.open_clip!r}; known: {', '.join(open_clip.list_models()[:12])}, ...")
        return open_clip.create_model(cfg.open_clip, pretrained=None)
    timm_name, kwargs = cfg.trunk
    vision = {"timm_model_name": "resnet10t", "timm_proj": "none", "timm_pool": "", "image_size": cfg.input_size[1]}
    model = open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=dict(cfg.text))
    # open_clip's TimmModel passes no img_size to timm: the trunk is swapped for the configured one
    model.visual.trunk = build_timm(timm_name, kwargs, None)
    return model


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], where: str, exclude: str | None = None) -> None:
    """``ClipError`` unless ``state`` has exactly ``model``'s tensors (those outside ``exclude``) with their shapes."""
    target = {k: v for k, v in model.state_dict().items() if not (exclude and k.startswith(exclude))}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or mismatched:
        detail = [f"{len(missing)} of {len(target)} tensors missing (e.g. {missing[:3]})",
                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"]
        if mismatched:
            k = mismatched[0]
            detail.append(f"{len(mismatched)} with another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                          f"model {tuple(target[k].shape)})")
        raise ClipError(f"weights {where} do not fit the model: " + ", ".join(detail))


def load_state(model: nn.Module, path: str | Path, exclude: str | None = None) -> dict[str, torch.Tensor]:
    """Load the tensors of ``path`` into ``model``, strictly: every model tensor (but those under the
    key prefix ``exclude``), nothing else, same shapes, checked before anything changes. The file's
    prototype map (``prototype_map.*``) is returned, not loaded."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClipError(f"CLIP weights file not found: {path}")
    state = read_state_dict(path)
    mine = {k: v for k, v in state.items() if not k.startswith(PROTOTYPE_MAP)}
    check_keys(model, mine, str(path), exclude)
    target = model.state_dict()
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in mine.items()}, strict=False)
    return {k: v for k, v in state.items() if k.startswith(PROTOTYPE_MAP)}


def apply_prototype_map(clip: "ClipModel", rest: dict[str, torch.Tensor], where: str) -> None:
    """Set ``clip``'s prototype map from a file's ``prototype_map.weight``/``.bias`` (if it has them)."""
    proto = {k.removeprefix(PROTOTYPE_MAP): v for k, v in rest.items()}
    if not proto:
        return
    if set(proto) != {"weight", "bias"} or proto["weight"].shape != (clip.embed_dim, clip.embed_dim) \
            or proto["bias"].shape != (clip.embed_dim,):
        raise ClipError(f"{where}: prototype map must be weight ({clip.embed_dim}, {clip.embed_dim}) and bias "
                        f"({clip.embed_dim},), got {({k: tuple(v.shape) for k, v in proto.items()})}")
    clip.set_prototype_map(proto["weight"], proto["bias"])


class ClipModel(nn.Module):
    """A CLIP model: ``encode_image``, ``encode_text``, ``tokenize``, ``text_features`` (class names),
    ``text_prototypes`` (names -> prototypes in the image-feature space) and ``backbone()`` (the image
    tower as a frozen :class:`~edgecl.backbones.Backbone` for the prototype learners)."""

    def __init__(self, model: nn.Module, cfg: ClipConfig, weights: dict[str, Any] | None = None, tokenizer=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.weights = dict(weights or {})  # where the weights came from (names, sha256)
        self.prototype_map: nn.Linear | None = None
        self.tokenizer = tokenizer  # a BPE tokenizer made with the model (a hub model's); else by config name

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def embed_dim(self) -> int:
        return int(self.cfg.embed_dim)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def set_prototype_map(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        lin = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(weight.float())
            lin.bias.copy_(bias.float())
        self.prototype_map = lin.requires_grad_(False)

    def tokenize(self, names: Sequence[str] | str) -> torch.Tensor:
        """int64 tokens ``(N, context_length)``: the byte tokenizer, or open_clip's own for a BPE model."""
        names = [names] if isinstance(names, str) else list(names)
        spec = self.cfg.tokenizer
        if spec is None:
            return (self.tokenizer or _open_clip().get_tokenizer(self.cfg.open_clip))(names)
        return torch.from_numpy(device_text.tokenize(names, spec))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        with onnx_attention():
            return self.model.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        with onnx_attention():
            return self.model.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)

    @torch.no_grad()
    def text_features(self, names: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text embeddings ``(N, embed_dim)`` of class names (unit rows when ``normalize``)."""
        out = [self.encode_text(self.tokenize(list(names[i : i + batch_size])), normalize=normalize)
               for i in range(0, len(names), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def prototypes_from_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings -> class prototypes in the image-feature space (``prototype_map``; without one,
        the text embeddings themselves: a model whose image and text embeddings share the space)."""
        t = nn.functional.normalize(text_features.float(), dim=-1)
        return t if self.prototype_map is None else self.prototype_map(t)

    @torch.no_grad()
    def text_prototypes(self, names: Sequence[str]) -> torch.Tensor:
        return self.prototypes_from_text(self.text_features(names))

    def backbone(self) -> Backbone:
        """The image tower as a frozen ``Backbone`` (``ClipBackbone``: it keeps this model as ``.clip``)."""
        spec = BackboneSpec(
            name=self.cfg.name, timm_name=(self.cfg.trunk or ("open_clip:" + str(self.cfg.open_clip), {}))[0],
            model_kwargs=dict((self.cfg.trunk or ("", {}))[1]), input_size=tuple(self.cfg.input_size),
            mean=tuple(self.cfg.mean), std=tuple(self.cfg.std), embedding_dim=self.embed_dim,
            weights=self.weights.get("image", f"clip:{self.cfg.name}"), weights_sha256=self.weights.get("image_sha256"),
            notes={"clip": self.cfg.name},
        )
        trunk = self.visual.trunk if self.cfg.trunk is not None else self.visual
        return ClipBackbone(trunk, spec, self)


class ClipBackbone(Backbone):
    """A CLIP image tower as a frozen backbone; ``.clip`` is the whole :class:`ClipModel` (not a submodule:
    the backbone's state dict holds the image tower only)."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, clip: ClipModel):
        super().__init__(model, spec)
        self.__dict__["clip"] = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with onnx_attention():
            return super().forward(x)


@contextmanager
def onnx_attention():
    """During an ONNX export, turns off torch's fused attention kernel, which has no ONNX operator (an open_clip
    ViT's ``nn.MultiheadAttention`` takes it in eval mode); does nothing otherwise."""
    if not torch.onnx.is_in_onnx_export():
        yield
        return
    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)


def from_config(cfg: ClipConfig | str, seed: int | None = 0) -> ClipModel:
    """A randomly initialised ``ClipModel`` of ``cfg`` (a ``ClipConfig`` or an open_clip config name)."""
    if isinstance(cfg, str):
        cfg = open_clip_config(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    return ClipModel(build(cfg), cfg, {"image": f"random:{seed}", "text": f"random:{seed}"}).eval()


def open_clip_config(name: str) -> ClipConfig:
    """The ``ClipConfig`` of a registered open_clip model config (its image size, OpenAI mean/std)."""
    oc = _open_clip()
    conf = oc.get_model_config(name)
    if conf is None:
        raise ClipError(f"unknown open_clip config {name!r}; known: {', '.join(oc.list_models()[:12])}, ...")
    size = int(conf["vision_cfg"].get("image_size", 224))
    return ClipConfig(name=name, embed_dim=int(conf["embed_dim"]), open_clip=name, input_size=(3, size, size))


def from_open_clip_config(name: str, config: dict[str, Any], tokenizer=None, seed: int | None = 0) -> ClipModel:
    """A randomly initialised ``ClipModel`` named ``name`` of an ``open_clip_config.json`` (``model_cfg``, and
    ``preprocess_cfg`` with mean/std), built as ``open_clip.create_model`` builds it, without tower weights."""
    model_cfg, pre = copy.deepcopy(config["model_cfg"]), config.get("preprocess_cfg", {})
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    cfg = ClipConfig(name=name, embed_dim=int(model_cfg["embed_dim"]), open_clip=name,
                     input_size=(3, int(height), int(width)), mean=tuple(pre.get("mean", OPENAI_MEAN)),
                     std=tuple(pre.get("std", OPENAI_STD)))
    if seed is not None:
        torch.manual_seed(seed)
    weights = {"image": f"random:{seed}", "text": f"random:{seed}"}
    return ClipModel(_open_clip_module(name, model_cfg), cfg, weights, tokenizer).eval()


def _open_clip_module(name: str, model_cfg: dict[str, Any]) -> nn.Module:
    """open_clip's model class for ``model_cfg`` (``CLIP``, ``CustomTextCLIP`` or ``CoCa``, picked as
    ``open_clip.create_model`` picks it) with random weights: no pre-trained timm or Hugging Face tower."""
    oc = _open_clip()
    vision, text = model_cfg.setdefault("vision_cfg", {}), model_cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    custom = model_cfg.pop("custom_text", False) or "hf_model_name" in text
    cls = (oc.CoCa if "multimodal_cfg" in model_cfg else oc.CustomTextCLIP) if custom else oc.CLIP
    try:
        return cls(**model_cfg)
    except Exception as exc:  # open_clip's constructors raise many types for a bad config
        raise ClipError(f"cannot build {name} from its open_clip config: {type(exc).__name__}: {exc}") from exc


def open_clip_tokenizer(config: dict[str, Any], cache_dir: str | None = None):
    """The tokenizer of an ``open_clip_config.json``, as ``open_clip.get_tokenizer`` picks it for a hub model: the
    Hugging Face tokenizer its text config names, else open_clip's BPE ``SimpleTokenizer``."""
    oc = _open_clip()
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    text = config.get("model_cfg", {}).get("text_cfg", {})
    length, kwargs = text.get("context_length", DEFAULT_CONTEXT_LENGTH), dict(text.get("tokenizer_kwargs", {}))
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(text["hf_tokenizer_name"], context_length=length, cache_dir=cache_dir,
                           tokenizer_mode=text.get("tokenizer_mode"), **kwargs)
    return oc.SimpleTokenizer(context_length=length, **kwargs)


def load(cfg: ClipConfig | str, weights: str | Path | None = None) -> ClipModel:
    """``cfg`` (an open_clip config name or a ``ClipConfig``) with every tensor from the local file ``weights``
    (``.safetensors``, ``.pt``/``.bin`` state dict or training checkpoint), loaded strictly; the named
    embedded models load with ``edgecl.zoo.load_clip``."""
    if weights is None:
        raise ClipError(f"no weights file for {getattr(cfg, 'name', cfg)!r}: the embedded CLIP models load with "
                        "edgecl.zoo.load_clip(name) (a learner finds one as backbone.clip); an open_clip config "
                        "needs a local weights file (nothing is downloaded)")
    model = from_config(cfg, seed=0)
    apply_prototype_map(model, load_state(model.model, weights), str(weights))
    digest = sha256_of(Path(weights).expanduser())
    model.weights = {"image": f"file:{Path(weights).name}", "image_sha256": digest, "text": f"file:{Path(weights).name}",
                     "text_sha256": digest}
    return model


def zero_shot_scores(clip: ClipModel, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(N, C)`` of image embeddings to unit text embeddings."""
    with torch.no_grad():
        return clip.encode_image(images, normalize=True) @ nn.functional.normalize(text, dim=-1).T


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)
