"""Contrastive pre-training of the embedded tiny CLIP on rendered characters and their Unicode names.

**Pairs** (``name_pairs``): images of code points paired with ``unicodedata.name``, on code points
that are never a class of the ``glyphs`` or ``emoji`` benchmarks' pools:

* glyphs: the matplotlib pre-training corpus (``glyphs.pretrain_corpus(source="matplotlib")``: code
  points drawn by 2..7 of matplotlib's fonts, so never a glyphs benchmark class), less any code
  point of the emoji pool;
* emoji: code points that 2..4 of the five emoji vendors draw (never an emoji benchmark class, whatever
  N and seed) plus the emoji pool's code points outside the classes of the specs in
  ``emoji_exclude`` (by default ``emoji:100``, ``emoji:200``, ``emoji:500`` at data seed 0, the
  benchmark tables' data sets), less any glyphs benchmark code point; each image from one of the
  vendors that draw the code point (cycled), augmented as the emoji benchmark.

**Training** (LiT, "Locked-image Tuning", Zhai et al. 2022): the image tower is ``edgecl-vit-tiny``'s
trunk, locked; its features of every pair image are computed once. Each step takes ``batch_size``
distinct classes, one random image of each, and minimises the symmetric InfoNCE loss of CLIP
(cross-entropy of ``logit_scale * cos(image, text)`` both ways, ``logit_scale`` learnt, at most 100)
over the text tower, through ``edgecl.loop.train`` (AdamW, warm-up + cosine). The text transformer
is causal, so a batch runs on its tokens up to the longest name (``_encode_text``: equal to
open_clip's ``encode_text`` at the end-of-text positions).

**Prototype map**: afterwards, a ridge regression from the unit text embedding of a class's name to
the mean image feature of its pairs (closed form, ``fit_prototype_map``), so a class added by name
gets a prototype on the scale of image prototypes (the modality gap of CLIP otherwise keeps text
prototypes far from every image). Deterministic like ``edgecl.pretrain.trainer``.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgecl_runtime.preprocess import preprocess

from ..clip.model import TINY, ClipConfig, ClipModel, from_config
from ..data import emoji, generated, glyphs
from ..loop import cosine_schedule, train
from .recipe import Recipe
from .trainer import deterministic

MAX_LOGIT_SCALE = float(np.log(100.0))


@dataclass
class NamePairs:
    """uint8 images ``(N, H, W, 3)``, their class ``labels`` ``(N,)``, per class its code point and name."""

    images: np.ndarray
    labels: np.ndarray
    codepoints: list[int]
    names: list[str]
    kinds: list[str] = field(default_factory=list)  # "glyph" or "emoji" per class


def emoji_codepoints(exclude: tuple[str, ...] = ("emoji:100", "emoji:200", "emoji:500")) -> list[int]:
    """Emoji pre-training code points (module doc): vendors' partial code points + the pool less ``exclude``."""
    pool = set(emoji.benchmark_pool())
    counts: dict[int, int] = {}
    for v in emoji.VENDORS:
        for cp in emoji.vendor_codepoints(v):
            counts[cp] = counts.get(cp, 0) + 1
    partial = {cp for cp, n in counts.items() if 2 <= n < len(emoji.VENDORS) and emoji._eligible(cp)}
    held = set()
    for spec in exclude:
        held.update(emoji.plan(emoji.parse_spec(spec))[0])
    glyph_classes = {cp for cp, _ in glyphs.benchmark_pool()}
    return sorted((partial | (pool - held)) - glyph_classes)


def _emoji_items(cps: list[int], per_class: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    tables = {v: emoji.vendor_codepoints(v) for v in emoji.VENDORS}
    items = []
    for cp in cps:
        vendors = [v for v in emoji.VENDORS if cp in tables[v]]
        order = rng.permutation(len(vendors))
        items += [(vendors[int(order[j % len(vendors)])], cp) for j in range(per_class)]
    return items


def name_pairs(glyph_per_class: int, emoji_per_class: int, size: int, seed: int, emoji_exclude: tuple[str, ...],
               workers: int | None = None, glyph_classes: int | None = None, emoji_classes: int | None = None) -> NamePairs:
    """The pre-training pairs (module doc); images of ``size`` px, deterministic from ``seed``. ``glyph_classes`` /
    ``emoji_classes`` keep only that many of each (the first of the glyph corpus' fixed order; a seeded choice
    of the emoji code points), for small test runs."""
    n_fallback = glyph_classes or len(glyphs.fallback_pool())
    corpus = glyphs.pretrain_corpus(n_fallback, glyph_per_class, size=size, seed=seed, source="matplotlib", workers=workers)
    glyph_cps = [int(n.removeprefix("U+"), 16) for n in corpus.class_names]
    emoji_pool = set(emoji.benchmark_pool())
    keep = [c for c, cp in enumerate(glyph_cps) if cp not in emoji_pool]
    rows = corpus.class_indices(keep)
    relabel = np.full(len(glyph_cps), -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    e_cps = emoji_codepoints(tuple(emoji_exclude))
    if emoji_classes is not None:
        e_cps = sorted(np.random.default_rng([seed, 0x656D]).choice(e_cps, emoji_classes, replace=False).tolist())
    items = _emoji_items(e_cps, emoji_per_class, np.random.default_rng([seed, 0x636C6970]))
    workers = generated.default_workers() if workers is None else workers
    e_images = generated.generate(emoji.render_emoji, items, size, [seed, 0x636C6970, emoji.GENERATOR_VERSION],
                                  emoji.EMOJI_AUGMENT, None, workers)
    e_labels = len(keep) + np.repeat(np.arange(len(e_cps), dtype=np.int64), emoji_per_class)
    cps = [glyph_cps[c] for c in keep] + e_cps
    return NamePairs(
        images=np.concatenate([np.asarray(corpus.images)[rows], e_images]),
        labels=np.concatenate([relabel[np.asarray(corpus.labels)[rows]], e_labels]),
        codepoints=cps, names=[unicodedata.name(chr(cp)) for cp in cps],
        kinds=["glyph"] * len(keep) + ["emoji"] * len(e_cps),
    )


@torch.no_grad()
def image_features(clip: ClipModel, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The image tower's embeddings ``(N, embed_dim)`` of uint8 images."""
    cfg, out = clip.cfg, []
    clip.eval()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(preprocess(images[i : i + batch_size], cfg.input_size, cfg.mean, cfg.std))
        out.append(clip.encode_image(x))
    return torch.cat(out)


def _encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``encode_text`` on the first ``L`` positions (``L``: the longest name + SOT/EOT); the
    causal mask makes the end-of-text features equal to the full-length run's."""
    n = int((tokens > 0).sum(1).max())
    tokens = tokens[:, :n]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection if not isinstance(model.text_projection, nn.Linear) else model.text_projection(x)


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric contrastive loss of matching rows, and the image->text top-1 accuracy of the batch."""
    logits = logit_scale.exp() * nn.functional.normalize(image, dim=-1) @ nn.functional.normalize(text, dim=-1).T
    target = torch.arange(len(logits))
    loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
    return loss, (logits.argmax(1) == target).float().mean()


def fit_prototype_map(text: torch.Tensor, prototypes: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` minimising ``|unit(text) W^T + b - prototypes|^2 + ridge * C / E * |W|^2`` (closed form, float64)."""
    t = nn.functional.normalize(text.double(), dim=-1)
    x = torch.cat([t, torch.ones(len(t), 1, dtype=t.dtype)], 1)
    reg = torch.eye(x.shape[1], dtype=t.dtype) * ridge * len(t) / t.shape[1]
    reg[-1, -1] = 0.0  # the bias is not shrunk
    sol = torch.linalg.solve(x.T @ x + reg, x.T @ prototypes.double())
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()


def _class_means(feats: torch.Tensor, labels: np.ndarray, n: int) -> torch.Tensor:
    sums = torch.zeros(n, feats.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(labels), feats.double())
    return (sums / torch.from_numpy(np.bincount(labels, minlength=n)).double()[:, None]).float()


@dataclass
class ClipPretrainResult:
    clip: ClipModel
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def clip_config(recipe: Recipe) -> ClipConfig:
    """The tiny CLIP architecture of ``recipe`` (its ``model_kwargs``: ``embed_dim``, ``text``)."""
    kw = recipe.model_kwargs
    return ClipConfig(name=kw.get("name", TINY.name), embed_dim=int(kw["embed_dim"]), trunk=TINY.trunk,
                      text=dict(kw["text"]), input_size=tuple(recipe.input_size), mean=recipe.mean, std=recipe.std)


def _batches(recipe: Recipe, labels: np.ndarray, n_classes: int):
    """``recipe.steps`` batches ``(classes, image rows)``: distinct classes, one random image of each."""
    rng = np.random.default_rng([recipe.seed, 0x6C6974])
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    for _ in range(recipe.steps):
        classes = rng.choice(n_classes, min(recipe.batch_size, n_classes), replace=False)
        yield classes, np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes])


def pretrain_clip(recipe: Recipe, trunk_state: dict[str, torch.Tensor], threads: int | None = None,
                  log: Callable[[str], None] | None = None, log_every: int = 100, workers: int | None = None) -> ClipPretrainResult:
    """Train the text tower of ``recipe``'s tiny CLIP against the locked trunk ``trunk_state`` (module doc)."""
    kw = recipe.task_kwargs
    pairs = name_pairs(int(kw["glyph_per_class"]), int(kw["emoji_per_class"]), int(recipe.input_size[1]),
                       recipe.data_seed, tuple(kw["emoji_exclude"]), workers, kw.get("glyph_classes"),
                       kw.get("emoji_classes"))
    t0, history = time.perf_counter(), []
    with deterministic(recipe.seed, threads):
        clip = from_config(clip_config(recipe), seed=None)
        clip.visual.trunk.load_state_dict(trunk_state)
        clip.model.lock_image_tower()
        feats = image_features(clip, pairs.images)
        tokens = clip.tokenize(pairs.names)
        model = clip.model
        params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = cosine_schedule(opt, recipe.steps, recipe.warmup_steps)
        window: list[tuple[float, float]] = []

        def loss_fn(batch):
            classes, rows = batch
            model.logit_scale.data.clamp_(max=MAX_LOGIT_SCALE)
            loss, acc = info_nce(feats[torch.from_numpy(rows)], _encode_text(model, tokens[torch.from_numpy(classes)]),
                                 model.logit_scale)
            window.append((loss.item(), acc.item()))
            return loss

        def on_step(_loss):
            if log_every and len(window) % log_every == 0:
                loss, acc = np.mean(window[-log_every:], axis=0)
                history.append({"step": len(window), "loss": float(loss), "batch_acc": float(acc),
                                "seconds": time.perf_counter() - t0})
                if log:
                    log(f"step={len(window)} loss={loss:.4f} batch_acc={acc:.3f} t={time.perf_counter() - t0:.0f}s")

        model.train()
        train(_batches(recipe, pairs.labels, len(pairs.names)), loss_fn, opt, sched, clip_params=params,
              clip_grad=recipe.clip_grad, on_step=on_step)
        model.eval()
        model.logit_scale.data.clamp_(max=MAX_LOGIT_SCALE)
        text = clip.text_features(pairs.names)
        clip.set_prototype_map(*fit_prototype_map(text, _class_means(feats, pairs.labels, len(pairs.names)),
                                                  float(kw.get("ridge", 0.1))))
    last = np.mean(window[-min(len(window), 50):], axis=0)
    metrics = {"loss": float(last[0]), "batch_acc": float(last[1]), "classes": float(len(pairs.names)),
               "glyph_classes": float(pairs.kinds.count("glyph")), "emoji_classes": float(pairs.kinds.count("emoji")),
               "pairs": float(len(pairs.labels)), "logit_scale": float(model.logit_scale.detach().exp()),
               "seconds": time.perf_counter() - t0}
    return ClipPretrainResult(clip, metrics, history)
