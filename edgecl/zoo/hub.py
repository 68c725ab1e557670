"""Backbones from the Hugging Face hub, named the way timm names them.

* ``hf-hub:ORG/REPO`` (optionally ``@REVISION``): a timm repo (``config.json``: architecture, ``model_args``,
  ``pretrained_cfg`` with mean/std/input size; ``model.safetensors`` or ``pytorch_model.bin``) or an open_clip
  repo (``open_clip_config.json``; ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``). A repo
  with an open_clip config is an open_clip CLIP (both towers; the backbone is its image tower).
* timm's tagged pretrained names ``NAME.TAG`` (``vit_base_patch16_224.augreg2_in21k_ft_in1k``): timm's
  registry gives the repo (``pretrained_cfg.hf_hub_id``), the architecture and the preprocessing.

Files come through ``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache (``HF_HUB_CACHE``,
else ``HF_HOME``/hub, default ``~/.cache/huggingface/hub``): downloaded when online, read from the cache when
``HF_HUB_OFFLINE=1`` or the hub is unreachable; a model missing from the cache then is one ``BackboneError``
that says how to fetch it. Weights load strictly (``edgecl.backbones.load_weights``, ``edgecl.clip.load_state``).
What a backbone records is the repo, the revision (the snapshot's commit hash), the file name and its sha256
(``HubFile.record``), never a machine path; a run is rebuilt from the cache at that revision.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..backbones import BackboneError, build_timm, load_weights, sha256_of, timm_models
from ..clip.model import ClipModel, apply_prototype_map, from_open_clip_config, load_state, open_clip_tokenizer

HUB = "hf-hub:"
TIMM_CONFIG, TIMM_WEIGHTS = "config.json", ("model.safetensors", "pytorch_model.bin")
CLIP_CONFIG, CLIP_WEIGHTS = "open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class NotCached(BackboneError):
    """A hub file that is neither in the local cache nor downloadable now (offline or unreachable)."""


@dataclass(frozen=True)
class HubFile:
    """A file of a hub repo in the local cache."""

    repo_id: str
    revision: str  # the commit hash of the snapshot that holds the file
    filename: str
    path: Path  # in the local cache: read, never recorded

    @property
    def ref(self) -> str:
        """``hf-hub:REPO@COMMIT``: the weights field of a backbone spec."""
        return f"{HUB}{self.repo_id}@{self.revision}"

    def record(self) -> dict[str, str]:
        return {"repo": self.repo_id, "revision": self.revision, "file": self.filename}

    def sha256(self) -> str:
        """The file's sha256, checked against the cache's blob name (a weights blob is named by its sha256)."""
        blob = self.path.resolve()  # the snapshot's file links to the blob
        digest = sha256_of(blob)
        if _SHA256.fullmatch(blob.name) and blob.name != digest:
            raise BackboneError(f"{self.filename} of {self.repo_id}@{self.revision} in the Hugging Face cache is "
                                f"corrupt (sha256 {digest}, expected {blob.name}): delete {blob} and fetch "
                                f"it again (`hf download {self.repo_id} {self.filename}`)")
        return digest


@dataclass(frozen=True)
class HubModel:
    """A hub model as named: its repo, ``kind`` (``timm`` or ``open_clip``) and config file (``None`` for a tagged
    timm name, whose config is timm's registry)."""

    name: str
    repo_id: str
    kind: str
    config: HubFile | None


def is_tagged(name: str) -> bool:
    """Whether ``name`` is ``NAME.TAG`` with ``NAME`` a timm architecture."""
    timm = timm_models()
    arch, tag = timm.models.split_model_name_tag(name)
    return bool(tag) and timm.is_model(arch)


def is_hub_name(name: str) -> bool:
    return name.startswith(HUB)


def cache_dir() -> str:
    """The hub cache, read at each call (huggingface_hub reads ``HF_HUB_CACHE``/``HF_HOME`` once, on import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now, or as huggingface_hub read it on import."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def fetch(repo_id: str, filename: str, revision: str | None = None, local_only: bool = False) -> HubFile | None:
    """``filename`` of ``repo_id`` at ``revision`` (default: main) from the cache, downloaded first when online (and
    not ``local_only``); ``None`` if the repo has no such file; ``NotCached`` if it is not cached and cannot be
    downloaded now."""
    from huggingface_hub import errors, hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir(),
                                    local_files_only=local_only or offline()))
    except errors.LocalEntryNotFoundError as exc:
        raise NotCached(str(exc)) from exc
    except errors.EntryNotFoundError:
        return None
    except errors.RepositoryNotFoundError as exc:  # also a gated repo without access
        raise BackboneError(f"no accessible Hugging Face repo {repo_id!r} (missing, private or gated): {exc}") from exc
    except errors.RevisionNotFoundError as exc:
        raise BackboneError(f"{repo_id} has no revision {revision!r}") from exc
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as exc:
        raise BackboneError(f"cannot get {filename} of {repo_id} from the Hugging Face hub: {exc}") from exc
    return HubFile(repo_id, path.parent.name, filename, path)  # .../snapshots/<commit>/<filename>


def first_of(repo_id: str, filenames: tuple[str, ...], revision: str | None, what: str) -> HubFile:
    """The first of ``filenames`` that ``repo_id`` has (at ``revision``); one clear error if none is at hand. After
    a file that could not be downloaded the others are looked up in the cache only (huggingface_hub retries an
    unreachable hub for ~25 s per file)."""
    not_cached = False
    for filename in filenames:
        try:
            found = fetch(repo_id, filename, revision, local_only=not_cached)
        except NotCached:
            not_cached = True
            continue
        if found is not None:
            return found
    if not_cached:
        raise missing_error(repo_id, revision)
    raise BackboneError(f"{HUB}{repo_id} has no {what} ({' or '.join(filenames)})")


def missing_error(repo_id: str, revision: str | None) -> BackboneError:
    """The error of a model neither cached nor downloadable now, saying how to fetch it."""
    why = "HF_HUB_OFFLINE=1" if offline() else "the hub is unreachable"
    pin = f" --revision {revision}" if revision else ""
    return BackboneError(
        f"{HUB}{repo_id}{'@' + revision if revision else ''} is not in the Hugging Face cache ({cache_dir()}) and "
        f"cannot be downloaded ({why}): fetch it once with `hf download {repo_id}{pin}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}{pin}`) or run once online, or pass a local file: "
        f"--backbone TIMM_NAME --weights FILE"
    )


def resolve(name: str, revision: str | None = None) -> HubModel:
    """The hub model ``name`` names (``revision``, if given, replaces one in the name): a repo with an open_clip
    config is an open_clip CLIP, one with timm's ``config.json`` a timm model; a tagged name is timm's."""
    if not is_hub_name(name):
        return HubModel(name, tagged_repo(name), "timm", None)
    repo_id, _, pinned = name.removeprefix(HUB).partition("@")
    config = first_of(repo_id, (CLIP_CONFIG, TIMM_CONFIG), revision or pinned or None, "open_clip or timm config")
    return HubModel(name, repo_id, "open_clip" if config.filename == CLIP_CONFIG else "timm", config)


def tagged_repo(name: str) -> str:
    """The hub repo of timm's tagged name ``NAME.TAG`` (its ``pretrained_cfg.hf_hub_id``)."""
    timm = timm_models()
    arch, _ = timm.models.split_model_name_tag(name)
    known = timm.list_pretrained(f"{arch}.*")
    if name not in known:
        raise BackboneError(f"timm has no pretrained tag {name!r}; known: {', '.join(known) or 'none'}")
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    if not hub_id:
        raise BackboneError(f"timm's {name} has no Hugging Face hub weights: pass a local file, --weights FILE")
    return hub_id


def _read_json(file: HubFile) -> dict[str, Any]:
    try:
        return json.loads(file.path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{file.filename} of {file.repo_id}@{file.revision} is no JSON: {exc}") from exc


def timm_config(model: HubModel) -> tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]:
    """``(architecture, model_args, pretrained_cfg, weight file names)``: from the repo's ``config.json``, or for a
    tagged name from timm's registry."""
    timm = timm_models()
    if model.config is None:
        cfg = timm.models.get_pretrained_cfg(model.name)
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else TIMM_WEIGHTS
        return cfg.architecture, {}, cfg.to_dict(), files
    cfg = _read_json(model.config)
    pretrained = cfg.get("pretrained_cfg", cfg)  # older configs: one flat dict
    if "architecture" not in cfg:
        raise BackboneError(f"config.json of {model.repo_id} names no timm architecture")
    args = {k: v for k, v in cfg.get("model_args", {}).items() if k != "num_classes"}  # the backbone has none
    return cfg["architecture"], args, pretrained, TIMM_WEIGHTS


def timm_model(model: HubModel, img_size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model of a hub model with its weights loaded strictly, and the fields of its backbone spec."""
    arch, kwargs, pretrained, files = timm_config(model)
    revision = model.config.revision if model.config else None
    weights = first_of(model.repo_id, files, revision, "timm weights")
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    digest, net = weights.sha256(), build_timm(arch, kwargs, None)
    keymap = load_weights(net, arch, weights.path)
    cfg = timm_models().data.resolve_data_config({}, pretrained_cfg=pretrained)
    input_size = (3, int(img_size), int(img_size)) if img_size else tuple(int(v) for v in cfg["input_size"])
    notes = {"hub": weights.record(), **({"keymap": keymap} if keymap else {})}
    return net, dict(timm_name=arch, model_kwargs=kwargs, input_size=input_size,
                     mean=tuple(map(float, cfg["mean"])), std=tuple(map(float, cfg["std"])),
                     weights=weights.ref, weights_sha256=digest, notes=notes)


def open_clip_model(model: HubModel) -> ClipModel:
    """The open_clip CLIP of a hub model, every tensor from its weights file (strictly)."""
    if model.kind != "open_clip":
        raise BackboneError(f"{model.name} is a timm model, no open_clip CLIP (its repo has no {CLIP_CONFIG})")
    config = _read_json(model.config)
    if "model_cfg" not in config:
        raise BackboneError(f"open_clip_config.json of {model.repo_id} has no model_cfg")
    weights = first_of(model.repo_id, CLIP_WEIGHTS, model.config.revision, "open_clip weights")
    digest = weights.sha256()
    clip = from_open_clip_config(model.name, config, open_clip_tokenizer(config, cache_dir()))
    apply_prototype_map(clip, load_state(clip.model, weights.path), f"{weights.filename} of {model.repo_id}")
    clip.weights = {"image": weights.ref, "image_sha256": digest, "text": weights.ref, "text_sha256": digest,
                    "hub": weights.record()}
    return clip.eval()
