"""Shared by the PEFT/APER/EASE tests: a small timm ViT backbone and a few-task run of a learner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgecl.backbones import Backbone, BackboneSpec
from edgecl.backbones.base import build_timm, embedding_dim_of
from edgecl.data import BatchLoader, load_dataset
from edgecl.experiment import evaluate
from edgecl.learners import create_learner
from edgecl.protocol import ClassIncremental

SMALL_VIT = {"img_size": 32, "patch_size": 4, "depth": 3, "embed_dim": 96, "num_heads": 3}


def small_vit(seed: int = 0, **overrides) -> Backbone:
    """A seeded random timm ViT (ViT-tiny family, 4x4 patches on 32x32) small enough for CPU tests."""
    kwargs = {**SMALL_VIT, **overrides}
    torch.manual_seed(seed)
    model = build_timm("vit_tiny_patch16_224", kwargs, None)
    spec = BackboneSpec(
        name="test-small-vit", timm_name="vit_tiny_patch16_224", model_kwargs=kwargs, input_size=(3, 32, 32),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), embedding_dim=embedding_dim_of(model.eval(), (3, 32, 32)),
        weights=f"random:{seed}",
    )  # fmt: skip
    return Backbone(model, spec)


@dataclass
class Trained:
    learner: object
    scenario: ClassIncremental
    train: object
    test: object
    class_names: list[str]
    accuracy: list[float]  # on seen classes after each task, %


def train_learner(name: str, backbone: Backbone, classes: int = 20, increment: int = 10, **hparams) -> Trained:
    """``name`` over B``increment``-Inc``increment`` on ``shapes:classes`` (30 train / 10 test images per class)."""
    train, test = load_dataset(f"shapes:{classes}", image_size=(32, 32), seed=0, train_per_class=30, test_per_class=10)
    scenario = ClassIncremental(classes, increment, increment, seed=1993)
    train, test = scenario.remap(train), scenario.remap(test)
    learner = create_learner(name, backbone, **hparams)
    spec = backbone.spec
    acc = []
    for t in range(scenario.num_tasks):
        data = scenario.task_data(train, t)
        learner.fit_task(BatchLoader(data, spec.input_size, spec.mean, spec.std, 64, shuffle=True, seed=t))
        seen = scenario.seen_data(test, t)
        acc.append(100.0 * float(np.mean(evaluate(learner, seen, spec) == seen.labels)))
    return Trained(learner, scenario, train, test, list(train.class_names), acc)
