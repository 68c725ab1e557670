"""ZSCL: text-prototype classifier, reference-data distillation, weight-space ensembling, export, device classes."""

import numpy as np
import pytest
import torch

from clip_helpers import tiny_clip
from edgecl.data import BatchLoader, load_dataset, make_shapes
from edgecl.errors import ConfigError
from edgecl.experiment import evaluate
from edgecl.learners import create_learner, zscl
from edgecl.learners.vlm import class_prototypes, class_text
from edgecl.protocol import ClassIncremental
from edgecl_export.bundle import export_learner
from edgecl_runtime import Bundle
from edgecl_runtime.preprocess import preprocess
from peft_helpers import train_learner

FAST = {"ref_classes": 16, "ref_per_class": 2, "lr": 1e-3, "epochs": 5, "blocks": 2}


@pytest.fixture(scope="module")
def run():
    """ZSCL on shapes:10, B5-Inc5 (2 tasks) over a small CLIP, WE every 2 steps."""
    return train_learner("zscl", tiny_clip(), classes=10, increment=5, we_every=2, **FAST)


def _task(t: int = 0):
    train, _ = load_dataset("shapes:10", image_size=(32, 32), seed=0, train_per_class=30, test_per_class=10)
    scenario = ClassIncremental(10, 5, 5, seed=1993)
    return scenario.task_data(scenario.remap(train), t)


def _loader(data, spec, seed=0):
    return BatchLoader(data, spec.input_size, spec.mean, spec.std, 64, shuffle=True, seed=seed)


def test_zscl_learns_above_chance_with_text_prototypes(run):
    learner = run.learner
    assert run.accuracy[-1] > 1.5 * 100 / 10
    assert learner.train_stats["snapshots"] == 8  # 15 steps, a snapshot at steps 1, 3, ..., 15
    want = class_prototypes(learner.backbone, [class_text(n) for n in run.class_names]).numpy()
    np.testing.assert_allclose(learner.head.prototypes, want, atol=1e-6)
    assert np.all(learner.head.counts == 1)


def test_we_update_is_the_running_mean_of_snapshots():
    g = torch.Generator().manual_seed(0)
    snaps = [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(4)]
    average = {k: v.clone() for k, v in snaps[0].items()}
    for n, s in enumerate(snaps[1:], start=2):
        zscl.we_update(average, s, n)
    for k in average:
        torch.testing.assert_close(average[k], torch.stack([s[k] for s in snaps]).mean(0))


def test_the_exported_weights_are_the_mean_of_the_snapshots(monkeypatch):
    """After a task the tuned weights are the plain mean of the weights after steps 1, 1 + k, 1 + 2k, ..."""
    seen = []
    original = zscl.we_update

    def recording(average, current, n):
        seen.append({k: v.detach().clone() for k, v in current.items()})
        original(average, current, n)

    monkeypatch.setattr(zscl, "we_update", recording)
    backbone = tiny_clip()
    learner = create_learner("zscl", backbone, we_every=3, distill=0.0, **{**FAST, "epochs": 3})
    learner.fit_task(_loader(_task(), backbone.spec))
    assert learner.train_stats["steps"] == 9 and len(seen) == 3  # steps 1, 4, 7
    for name, p in learner.tuned.items():
        torch.testing.assert_close(p.detach(), torch.stack([s[name] for s in seen]).mean(0), atol=1e-6, rtol=1e-5)
    assert not torch.equal(seen[0][name], seen[-1][name])


def test_distillation_on_reference_data_keeps_features_closer_to_the_initial_model():
    spec, data = None, _task()
    drifts = {}
    for distill in (0.0, 1.0):
        backbone = tiny_clip()
        spec = backbone.spec
        learner = create_learner("zscl", backbone, distill=distill, we_every=0, **FAST)
        learner.reference()  # the initial model's reference features, before training
        assert learner.drift() < 1e-6
        learner.fit_task(_loader(data, spec))
        drifts[distill] = learner.drift()
    assert 0 < drifts[1.0] < 0.8 * drifts[0.0], drifts


def test_soft_cross_entropy_is_the_temperature_scaled_distillation_loss():
    t, s = torch.randn(4, 6), torch.randn(4, 6)
    want = -(torch.softmax(t / 2, 1) * torch.log_softmax(s / 2, 1)).sum(1).mean() * 4
    torch.testing.assert_close(zscl.soft_cross_entropy(t, s, 2.0), want)


def test_state_round_trip_and_bad_hparams(run):
    learner = run.learner
    again = create_learner("zscl", tiny_clip(), we_every=2, **FAST)
    again.load_state(learner.state())
    x = torch.from_numpy(preprocess(run.test.images[:8], (3, 32, 32), (0.5,) * 3, (0.5,) * 3))
    torch.testing.assert_close(again.logits(x), learner.logits(x))
    with pytest.raises(ConfigError, match="distill, we_every"):
        create_learner("zscl", learner.backbone, we_every=-1)


def test_export_is_one_averaged_network_and_the_device_adds_classes_by_name_and_images(run, tmp_path):
    learner, spec = run.learner, run.learner.backbone.spec
    report = export_learner(learner, run.class_names, tmp_path / "bundle")
    assert report.parity_max_abs_diff <= 1e-4
    bundle = Bundle.load(report.path)
    assert bundle.manifest["head"]["kind"] == "prototype_cosine"
    torch_pred = np.array(run.class_names)[evaluate(learner, run.test, spec)]
    assert np.mean(np.array(bundle.predict(run.test.images).labels) == torch_pred) >= 0.99
    # by name alone: the bundle carries the CLIP text tower, whose prototype is the one ZSCL trained against
    assert bundle.manifest["text"]["file"] == "text.onnx"
    bundle.add_class("BLACK STAR", text=True)
    head = Bundle.load(report.path).head
    want = class_prototypes(learner.backbone, ["BLACK STAR"])[0].numpy()
    np.testing.assert_allclose(head.prototypes[-1], want, atol=1e-4)
    np.testing.assert_allclose(head.prototypes[:10], learner.head.prototypes, atol=1e-6)  # the names it was trained with
    # from images: the class's prototype is the mean of the averaged tower's features
    extra, _ = make_shapes(100, 5, 1, seed=11)
    new = next(n for n in extra.class_names if n not in run.class_names)
    examples = extra.images[np.array(extra.class_names)[extra.labels] == new]
    bundle = Bundle.load(report.path)
    bundle.add_class(new, examples)
    head = Bundle.load(report.path).head
    x = torch.from_numpy(preprocess(examples, spec.input_size, spec.mean, spec.std))
    with torch.no_grad():
        feats = learner.embedding_module()(x).numpy()
    np.testing.assert_allclose(head.prototypes[-1], feats.mean(0), atol=1e-4)
    assert Bundle.load(report.path).classes[-2:] == ["BLACK STAR", new]
    Bundle.load(report.path).add_class("WHITE STAR", text=True)  # the text tower survives the updates
    np.testing.assert_allclose(Bundle.load(report.path).head.prototypes[-1],
                               class_prototypes(learner.backbone, ["WHITE STAR"])[0].numpy(), atol=1e-4)
    assert np.mean(np.array(Bundle.load(report.path).predict(examples).labels) == new) >= 0.8
