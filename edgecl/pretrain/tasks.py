"""Pre-training tasks: a stream of labelled training batches and a held-out set.

A task is built from a :class:`~edgecl.pretrain.recipe.Recipe` and exposes

* ``heads``: ``{head name: number of classes}``, one linear classifier each
  on top of the backbone's embedding (the loss is the sum over heads);
* ``batches()``: ``recipe.steps`` fresh batches ``(uint8 (B, H, W, 3), {head: int64 (B,)})``;
* ``holdout()``: a fixed held-out set of the same form, for accuracy.

Tasks (``TASKS``):

* ``shapes-factors``: images of the embedded shapes generator labelled by their
  factors (which of 10 shapes, which of 10 colours), never by the 100 benchmark
  classes. The cheap warm-up of the default CNN ``edgecl-resnet10t``.
* ``glyphs``: classification of many CJK ideographs (``edgecl.data.glyphs``
  pre-training corpus, disjoint from every benchmark class), fresh augmented
  renderings every step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from edgecl_runtime.preprocess import preprocess

from ..backbones import Backbone
from ..data import glyphs
from ..data.synthetic import COLOURS, SHAPES, render
from .recipe import Recipe

Batch = tuple[np.ndarray, dict[str, np.ndarray]]
# Builds a backbone a recipe names (its ``init``, a task's teacher): ``resolve(name, img_size=None)``.
Resolve = Callable[..., Backbone]


class PretrainTask:
    """Base class; subclasses set ``heads`` and implement ``batches`` / ``holdout``.

    ``targets`` (optional) names float regression targets ``{name: dim}`` that come with
    the labels (e.g. a teacher's embeddings for distillation): the trainer fits a linear
    projection of the embedding to each with a cosine loss.
    """

    heads: dict[str, int]
    targets: dict[str, int] = {}

    def __init__(self, recipe: Recipe, resolve: Resolve | None = None):
        self.recipe = recipe
        self.resolve = resolve
        self.size = int(recipe.input_size[1])

    def batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def holdout(self) -> Batch:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__} heads={self.heads}"


class ShapesFactors(PretrainTask):
    """Shapes images labelled by shape (10) and colour (10); see module doc."""

    CHUNK = 16_384  # images rendered at a time; the default recipe (120 x 128) fits in one chunk

    def __init__(self, recipe: Recipe, holdout_size: int = 1000, resolve: Resolve | None = None):
        super().__init__(recipe, resolve)
        self.heads = {"shape": len(SHAPES), "colour": len(COLOURS)}
        self.holdout_size = int(holdout_size)

    def _render(self, rng: np.random.Generator, n: int) -> Batch:
        shapes = rng.integers(0, self.heads["shape"], n)
        colours = rng.integers(0, self.heads["colour"], n)
        return render(shapes, colours, rng, self.size), {"shape": shapes, "colour": colours}

    def batches(self) -> Iterator[Batch]:
        r = self.recipe
        rng = np.random.default_rng(r.data_seed)
        left = r.steps * r.batch_size
        while left > 0:
            n = min(left, self.CHUNK - self.CHUNK % r.batch_size or r.batch_size)
            images, labels = self._render(rng, n)
            for i in range(0, n, r.batch_size):
                sl = slice(i, i + r.batch_size)
                yield images[sl], {k: v[sl] for k, v in labels.items()}
            left -= n

    def holdout(self) -> Batch:
        return self._render(np.random.default_rng(self.recipe.data_seed + 1), self.holdout_size)


class Glyphs(PretrainTask):
    """Which of ``num_classes`` CJK ideographs (Noto CJK faces; matplotlib fonts as a fallback,
    with classes disjoint from the glyphs benchmark): ``edgecl.data.glyphs`` pre-training corpus.

    With ``teacher`` (a backbone name, e.g. ``efficientnet-lite0-imagenet``) the batches also
    carry the teacher's embeddings of the same images at ``teacher_size`` px (target
    ``teacher``): feature distillation, a dense signal that gets a from-scratch ViT past the
    long plateau of the classification loss on a CPU budget.
    """

    def __init__(
        self, recipe: Recipe, num_classes: int = 1000, holdout_per_class: int = 1, source: str = "auto",
        teacher: str | None = None, teacher_size: int | None = None, resolve: Resolve | None = None,
    ):
        super().__init__(recipe, resolve)
        self.num_classes = int(num_classes)
        self.holdout_per_class = int(holdout_per_class)
        self.source = source
        self.heads = {"glyph": self.num_classes}
        self.teacher = None
        if teacher is not None:
            if resolve is None:
                raise ValueError("the glyphs task's teacher is a backbone: pass resolve= (edgecl.zoo.create_backbone)")
            self.teacher = resolve(teacher, img_size=teacher_size)
            self.targets = {"teacher": self.teacher.embedding_dim}
            # Targets are centred (mean of a separate calibration batch): raw CNN embeddings share a
            # large common direction that a cosine loss would reward for any input.
            calib, _ = next(glyphs_stream(self.num_classes, 512, self.size, recipe.data_seed + 2, source, 1))
            self._mean = self._teacher_features(calib).mean(0)

    def _teacher_features(self, images: np.ndarray) -> np.ndarray:
        spec = self.teacher.spec
        with torch.no_grad():
            return self.teacher(torch.from_numpy(preprocess(images, spec.input_size, spec.mean, spec.std))).numpy()

    def _labels(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        out = {"glyph": np.asarray(labels, dtype=np.int64)}
        if self.teacher is not None:
            out["teacher"] = (self._teacher_features(images) - self._mean).astype(np.float32)
        return out

    def batches(self) -> Iterator[Batch]:
        r = self.recipe
        for images, labels in glyphs_stream(self.num_classes, r.batch_size, self.size, r.data_seed, self.source, r.steps):
            yield images, self._labels(images, labels)

    def holdout(self) -> Batch:
        ds = glyphs.pretrain_corpus(
            self.num_classes, self.holdout_per_class, size=self.size, seed=self.recipe.data_seed + 1,
            source=self.source, workers=1, cache=False,
        )
        images = np.asarray(ds.images)
        return images, self._labels(images, ds.labels)


def glyphs_stream(num_classes: int, batch_size: int, size: int, seed: int, source: str, num_batches: int):
    return glyphs.pretrain_batches(num_classes, batch_size, size=size, seed=seed, source=source, num_batches=num_batches)


TASKS: dict[str, type[PretrainTask]] = {"shapes-factors": ShapesFactors, "glyphs": Glyphs}


def make_task(recipe: Recipe, resolve: Resolve | None = None) -> PretrainTask:
    if recipe.task not in TASKS:
        raise ValueError(f"unknown pre-training task {recipe.task!r}; known: {', '.join(TASKS)}")
    kwargs: dict[str, Any] = dict(recipe.task_kwargs)
    try:
        return TASKS[recipe.task](recipe, resolve=resolve, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad task_kwargs for {recipe.task!r}: {exc}") from exc
