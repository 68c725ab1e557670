"""What a user can choose, described for people and scripts: learners with their hyper-parameters, backbones.

``edgecl learners`` and ``edgecl backbones`` print these records (as a table
or with ``--json``). A learner's hyper-parameters come from its declaration:
a ``hparam_spec()`` class method when the learner has one (name -> default,
choices, meaning), else its ``defaults`` / ``choices`` / ``positive`` class
attributes (with the prompt learners' common defaults). A hyper-parameter's
meaning is, in this order, the learner's ``hparam_help`` entry, this module's
``MEANINGS`` (until the learners declare their own), or what the learner's
module documentation says of it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from .errors import ConfigError
from .learners import LEARNERS, Learner

__all__ = ["MEANINGS", "backbone_rows", "learner_hparams", "learner_rows", "learner_summary"]

# name -> meaning, or (learner, name) -> meaning where a learner means something else by it.
MEANINGS: dict[Any, str] = {
    "epochs": "training epochs (per trained task)",
    "lr": "peak learning rate (cosine decay)",
    "weight_decay": "optimizer weight decay (AdamW)",
    "seed": "seed of the learner's own randomness (initialisation, sampling, splits)",
    "head": "classifier during training: cosine or linear (a temporary head; classes are scored by prototypes)",
    **{(prompt, "head"): "linear: the learned linear head (no device classes); prototype: cosine prototypes "
                         "(device classes)" for prompt in ("l2p", "dualprompt", "coda_prompt")},
    "bottleneck": "hidden width of each adapter",
    "scale": "output scale of each adapter",
    "prompt_length": "prompt tokens per prompted block (VPT)",
    "peft": "parameter-efficient module trained on the first task: adapter, ssf, vpt_shallow or vpt_deep",
    "deep": "true: new prompt tokens at every block (VPT-deep); false: one set at the input (VPT-shallow)",
    "M": "width of the random projection before the ridge classifier (0: no projection)",
    "lambda_min_exp": "smallest ridge parameter tried: 10^lambda_min_exp",
    "lambda_max_exp": "largest ridge parameter tried: 10^lambda_max_exp",
    "val_fraction": "share of each task's data held out to choose the ridge parameter",
    "first_session": "PEFT module adapted on the first task before the projection (none: frozen backbone)",
    "adapt_epochs": "epochs of the first-session adaptation",
    "adapt_lr": "learning rate of the first-session adaptation",
    "lr_backbone": "learning rate of the fine-tuned backbone blocks (the slow learner)",
    "lr_head": "learning rate of the task classifier during fine-tuning",
    "tune_blocks": "last backbone blocks fine-tuned on every task (0: frozen backbone)",
    ("fecam", "beta"): "Tukey exponent of the embeddings (1: no transform)",
    "shrink1": "shrinkage of the covariance's diagonal",
    "shrink2": "shrinkage of the covariance's off-diagonal",
    "normalize_cov": "normalise each covariance to a correlation matrix",
    "use_init_ptm": "also concatenate the pre-trained (unadapted) embedding",
    "reweight": "weigh other subspaces by alpha / beta (subspace_cosine head); false: plain cosine",
    "alpha": "weight of the other tasks' adapter subspaces in a class's score (divided by tasks - 1)",
    ("ease", "beta"): "weight of the pre-trained embedding's block in a class's score",
    "size": "prompts in the pool",
    "length": "tokens per prompt",
    "top_n": "prompts selected per image",
    "pull": "weight of the loss pulling the selected keys to the queries",
    "pool": "what classifies: prompt (mean output at the prompt positions) or cls ([CLS] token)",
    "g_layers": "blocks with the shared G-prompt (comma-separated indices)",
    "e_layers": "blocks with the task E-prompts (comma-separated indices)",
    "g_length": "tokens of the G-prompt",
    "e_length": "tokens of each E-prompt",
    "layers": "prompted blocks (comma-separated indices)",
    "per_task": "prompt components added per task",
    "ortho": "weight of the orthogonality penalty on components, keys and attention vectors",
}


def _learner_class(name: str) -> type:
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; available: {', '.join(sorted(LEARNERS))}")
    return LEARNERS[name]


def _module_doc(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return (module.__doc__ if module else None) or cls.__doc__ or ""


def learner_summary(name: str) -> str:
    """The first line of the learner's module documentation (its paper, or what it is)."""
    lines = _module_doc(_learner_class(name)).strip().splitlines()
    return lines[0] if lines else ""


def learner_rows() -> list[dict[str, Any]]:
    """``[{"name", "summary", "head_kind", "hparams"}]`` of every registered learner, by name."""
    return [{"name": name, "summary": learner_summary(name), "head_kind": _head_kind(LEARNERS[name]),
             "hparams": sorted(_declared(LEARNERS[name])[0])} for name in sorted(LEARNERS)]


def _head_kind(cls: type):
    """The kind of the learner's runtime head (``head_class``), ``None`` where a hyper-parameter picks it."""
    head = getattr(cls, "head_class", None)
    if not isinstance(head, type) or getattr(cls, "head_kind", None) is not Learner.head_kind:
        return None  # a per-instance choice (prompt learners' and EASE's heads)
    return head.kind


def _declared(cls: type) -> tuple[dict[str, Any], dict[str, tuple], tuple[str, ...]]:
    """``(defaults, choices, positive)`` as the learner declares them."""
    spec = getattr(cls, "hparam_spec", None)
    if callable(spec):
        entries = spec()
        return ({k: e["default"] for k, e in entries.items()},
                {k: tuple(e["choices"]) for k, e in entries.items() if e.get("choices")},
                tuple(k for k, e in entries.items() if e.get("positive")))
    defaults = dict(getattr(cls, "defaults", {}) or {})
    choices = dict(getattr(cls, "choices", {}) or {})
    return defaults, choices, tuple(getattr(cls, "positive", ()) or ())


def learner_hparams(name: str) -> list[dict[str, Any]]:
    """Every hyper-parameter of learner ``name``: ``{"name", "default", "type", "choices", "positive",
    "meaning"}``, by name. ``ConfigError`` (a ``ValueError``) for an unknown learner."""
    cls = _learner_class(name)
    defaults, choices, positive = _declared(cls)
    helps = getattr(cls, "hparam_help", None) or {}
    doc = " ".join(_module_doc(cls).split())
    return [{"name": key, "default": value, "type": type(value).__name__,
             "choices": list(choices[key]) if key in choices else None, "positive": key in positive,
             "meaning": helps.get(key) or MEANINGS.get((name, key)) or MEANINGS.get(key) or _sentence_naming(doc, key)} for key, value in sorted(defaults.items())]


def _sentence_naming(doc: str, key: str, width: int = 160) -> str:
    """What ``doc`` (one line) says of ````key````: the words in the parenthesis after its first mention
    (``beta`` (0.5, Tukey exponent) -> "Tukey exponent") when they say more than the default, else the
    sentence naming it, cut to about ``width`` characters."""
    at = doc.find(f"``{key}``")
    if at < 0:
        return ""
    after = doc[at + len(key) + 4 :]
    paren = re.match(r"\s*\(([^()]*)\)", after)
    if paren:
        parts = re.split(r"[,;]\s*", paren.group(1), maxsplit=1)
        if len(parts) == 2 and parts[1].strip():
            return parts[1].strip().replace("``", "")
    starts = [m.end() for m in re.finditer(r"[.:;]\s", doc[:at])]
    start = starts[-1] if starts else 0
    end_match = re.search(r"\.(\s|$)", doc[at:])
    end = at + end_match.start() + 1 if end_match else len(doc)
    text = doc[start:end].strip()
    if len(text) > width:
        lo = max(start, at - width // 3)
        text = ("…" if lo > start else "") + doc[lo : lo + width].strip() + "…"
    return text.replace("``", "")


def backbone_rows() -> list[dict[str, Any]]:
    """``[{"name", "timm_name", "input_size", "weights", "source", "kind"}]`` of the embedded and named backbones;
    ``weights`` is their status here (``installed``, ``not installed``, ...)."""
    from .zoo import EMBEDDED, NAMED
    from .zoo.embedded import weights_path, weights_status

    rows = [{"name": name, "kind": "embedded", "timm_name": recipe.timm_name, "input_size": list(recipe.input_size),
             "weights": weights_status(name), "source": f"made offline by edgecl ({weights_path(name)})",
             "install": None} for name, recipe in EMBEDDED.items()]
    from .zoo.clip import CLIP_MODELS, weights_status as clip_status

    for name, (cfg, recipe) in CLIP_MODELS.items():
        rows.append({"name": name, "kind": "clip", "timm_name": recipe.timm_name, "input_size": list(cfg.input_size),
                     "weights": clip_status(name), "source": "image tower: edgecl-vit-tiny; text tower made offline "
                     "by edgecl (docs/clip.md)", "install": "pip install 'edgecl[clip]'"})
    for name, entry in NAMED.items():
        rows.append({"name": name, "kind": "named", "timm_name": entry.timm_name, "input_size": list(entry.input_size),
                     "weights": entry.status(), "source": entry.source, "install": entry.install})
    return rows
