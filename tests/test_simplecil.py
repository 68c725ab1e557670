import numpy as np
import torch

from edgecl.zoo import create_backbone
from edgecl.data import BatchLoader
from edgecl.experiment import evaluate
from edgecl.learners import LEARNERS, create_learner
from edgecl.rundir import load_run


def test_accuracy_well_above_chance_on_embedded_data(trained):
    result, _ = trained
    m = result.metrics
    assert len(m.overall) == 3
    chance_last = 100.0 / 30
    assert m.last > 80.0 > 20 * chance_last
    assert m.average_incremental >= m.last
    assert 0.0 <= m.forgetting < 10.0


def test_random_backbone_is_worse_than_pretrained(trained):
    """The embedded warm-up matters: a random-init backbone does clearly worse."""
    result, _ = trained
    rand = create_learner("simplecil", create_backbone("resnet10t", weights="random", img_size=32))
    spec = result.learner.backbone.spec
    for t in range(result.scenario.num_tasks):
        rand.fit_task(BatchLoader(result.scenario.task_data(result.train, t), spec.input_size, spec.mean, spec.std))
    acc = np.mean(evaluate(rand, result.test, spec) == result.test.labels) * 100
    assert acc < result.metrics.last - 10


def test_prototypes_are_class_means_and_old_ones_never_change(trained):
    result, _ = trained
    learner = create_learner("simplecil", result.learner.backbone)
    spec = learner.backbone.spec
    t0 = result.scenario.task_data(result.train, 0)
    learner.fit_task(BatchLoader(t0, spec.input_size, spec.mean, spec.std, batch_size=7))
    before = learner.prototypes.clone()
    feats, labels = learner.embed(BatchLoader(t0, spec.input_size, spec.mean, spec.std))
    torch.testing.assert_close(before[3], feats[labels == 3].mean(0), atol=1e-5, rtol=1e-5)
    learner.fit_task(BatchLoader(result.scenario.task_data(result.train, 1), spec.input_size, spec.mean, spec.std))
    assert learner.num_classes == 20
    torch.testing.assert_close(learner.prototypes[:10], before)


def test_run_dir_round_trip(trained):
    result, run_dir = trained
    run, learner = load_run(run_dir)
    assert run["class_names"] == result.class_names and learner.num_classes == 30
    np.testing.assert_array_equal(learner.state()["counts"], result.learner.state()["counts"])
    spec = learner.backbone.spec
    np.testing.assert_array_equal(evaluate(learner, result.test, spec), evaluate(result.learner, result.test, spec))


def test_registry_and_bad_hparams():
    assert "simplecil" in LEARNERS
    bb = create_backbone("resnet10t", weights="random", img_size=32)
    import pytest

    with pytest.raises(ValueError, match="unknown learner"):
        create_learner("nope", bb)
    with pytest.raises(ValueError, match="simplecil has no hyper-parameter"):
        create_learner("simplecil", bb, lr=0.1)
