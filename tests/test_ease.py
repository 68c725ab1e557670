"""EASE: one adapter per task, prototype complement, all adapters in one exported graph, device classes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecl.data import make_shapes
from edgecl.experiment import evaluate
from edgecl.learners.ease import complement, subspace_weights
from edgecl.rundir import load_run, save_run
from edgecl.workflows import export_run
from peft_helpers import small_vit, train_learner
from tests.conditioning import assert_top1_agrees, torch_scores
from edgecl_runtime import Bundle
from edgecl_runtime.preprocess import preprocess


@pytest.fixture(scope="module")
def ease():
    """EASE on shapes:15, B5-Inc5 (3 tasks, 3 adapters) on a small ViT."""
    return train_learner("ease", small_vit(), classes=15, increment=5, epochs=2)


def test_complement_is_the_similarity_weighted_mix_of_reference_prototypes():
    g = torch.Generator().manual_seed(0)
    d = 4
    tasks = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    means = torch.randn(7, 3 * d, generator=g, dtype=torch.float64)
    out = complement(means, tasks, d)
    for i, s in [(0, 1), (0, 2), (1, 2)]:
        old, ref = tasks == i, tasks >= s
        bi, bs = slice(i * d, (i + 1) * d), slice(s * d, (s + 1) * d)
        w = torch.softmax(F.cosine_similarity(means[old, None, bi], means[None, ref, bi], dim=2), dim=1)
        torch.testing.assert_close(out[old, bs], w @ means[ref, bs])
    real = torch.zeros_like(means, dtype=torch.bool)
    for c, t in enumerate(tasks.tolist()):
        real[c, : (t + 1) * d] = True
    assert torch.equal(out[real], means[real])  # real prototypes are never touched
    # With the pre-trained block first (use_init_ptm), block 0 is left alone and subspaces shift by one.
    ptm = torch.cat([torch.randn(7, d, generator=g, dtype=torch.float64), means], dim=1)
    torch.testing.assert_close(complement(ptm, tasks, d, offset=1)[:, d:], out)


def test_subspace_weights_follow_the_reference_reweighting():
    tasks = torch.tensor([0, 0, 1, 2, 2])
    w = subspace_weights(tasks, 3, alpha=0.1, beta=0.0, offset=0)
    other = 0.1 / 2  # alpha / (T - 1)
    assert torch.equal(w, torch.tensor([[1, other, other]] * 2 + [[other, 1, other]] + [[other, other, 1]] * 3, dtype=torch.float64))
    # the last row (a class added on the device) is the newest task's; with the pre-trained block, beta weighs it
    w = subspace_weights(tasks, 3, alpha=0.1, beta=0.5, offset=1)
    assert w.shape == (6, 4) and torch.all(w[:, 0] == 0.5) and torch.equal(w[:, 1:], subspace_weights(tasks, 3, 0.1, 0, 0))
    assert torch.equal(subspace_weights(torch.tensor([0, 0]), 1, 0.1, 0.0, 0), torch.ones(3, 1, dtype=torch.float64))
    from edgecl.learners import create_learner

    with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
        create_learner("ease", small_vit(), alpha=-0.1)


def test_ease_scores_reweighted_subspaces(ease):
    learner = ease.learner
    x = torch.from_numpy(
        preprocess(ease.test.images[:8], learner.backbone.spec.input_size, learner.backbone.spec.mean, learner.backbone.spec.std)
    )
    with torch.no_grad():
        f = learner.embedding_module()(x).float()
    blocks, d = 3, learner.backbone.embedding_dim
    expected = torch.zeros(8, 15)
    w = subspace_weights(learner.task_of_class, 3, 0.1, 0.0, 0)
    for c in range(15):
        for j in range(blocks):
            cos = F.cosine_similarity(f[:, j * d : (j + 1) * d], learner.prototypes[c, j * d : (j + 1) * d][None], dim=1)
            expected[:, c] += float(w[c, j]) * cos
    torch.testing.assert_close(learner.logits(x), expected, atol=1e-5, rtol=1e-5)
    kind, arrays = learner.export_head()
    assert kind == "subspace_cosine" and np.array_equal(arrays["new_class_weights"], w[-1].float().numpy())
    # reweight=false: plain cosine over the concatenation, the prototype head
    learner.hparams["reweight"] = False
    try:
        torch.testing.assert_close(learner.logits(x), F.normalize(f, dim=1) @ F.normalize(learner.prototypes, dim=1).T)
        assert learner.export_head()[0] == "prototype_cosine"
    finally:
        learner.hparams["reweight"] = True


def test_ease_grows_one_frozen_adapter_per_task_and_learns(ease):
    learner, d = ease.learner, ease.learner.backbone.embedding_dim
    assert len(learner.adapters) == 3 and learner.embedding_dim == 3 * d
    assert learner.task_of_class.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert all(not p.requires_grad for a in learner.adapters for p in a.peft_parameters())
    states = [a.peft_state() for a in learner.adapters]
    assert not torch.equal(states[0]["model.blocks.0.mlp.adapter.up.weight"], states[1]["model.blocks.0.mlp.adapter.up.weight"])
    assert ease.accuracy[-1] > 2 * 100 / 15
    # New classes' prototypes are their real means in every subspace.
    spec = learner.backbone.spec
    last = ease.scenario.task_data(ease.train, 2)
    x = torch.from_numpy(preprocess(last.images, spec.input_size, spec.mean, spec.std))
    with torch.no_grad():
        feats = learner.embedding_module()(x).double()
    for c in range(10, 15):
        torch.testing.assert_close(learner.prototypes[c].double(), feats[torch.from_numpy(last.labels) == c].mean(0), atol=1e-5, rtol=1e-5)


def test_ease_exports_all_adapters_in_one_graph_and_adds_classes_on_the_device(ease, tmp_path):
    import onnx

    run_dir = save_run(tmp_path / "run", {"dataset": "shapes:15", "data_seed": 0}, ease.learner, ease.class_names, {})
    _, loaded = load_run(run_dir)
    spec = ease.learner.backbone.spec
    np.testing.assert_array_equal(evaluate(loaded, ease.test, spec), evaluate(ease.learner, ease.test, spec))
    report = export_run(run_dir, tmp_path / "bundle")
    assert report.parity_max_abs_diff <= 1e-4
    graph = onnx.load(str(report.path / "model.onnx")).graph
    assert sum(n.op_type == "Conv" for n in graph.node) == 1  # one patch embedding feeds the 3 branches
    bundle = Bundle.load(report.path)
    assert bundle.classes == ease.class_names
    assert_top1_agrees(torch_scores(ease.learner, ease.test), bundle.scores(ease.test.images),
                       bundle.predict(ease.test.images).indices)
    # A device class gets a real prototype in every subspace: the mean of its examples' embeddings.
    extra, _ = make_shapes(100, 5, 1, seed=11)
    new = next(n for n in extra.class_names if n not in ease.class_names)
    examples = extra.images[np.array(extra.class_names)[extra.labels] == new]
    bundle.add_class(new, examples)
    head = Bundle.load(report.path).head
    with torch.no_grad():
        feats = ease.learner.embedding_module()(torch.from_numpy(preprocess(examples, spec.input_size, spec.mean, spec.std)))
    np.testing.assert_allclose(head.prototypes[-1], feats.mean(0).numpy(), atol=1e-4)
    assert head.prototypes.shape == (16, 3 * spec.embedding_dim)
    assert bundle.manifest["head"]["kind"] == "subspace_cosine"
    np.testing.assert_array_equal(head.weights[-1], head.weights[-2])  # weighted as the newest task's classes
    # it scores its own examples higher than the test images of the other classes
    bundle = Bundle.load(report.path)
    on_own = head.scores(bundle.embed(examples))[:, -1].mean()
    others = head.scores(bundle.embed(ease.test.images))[:, -1]
    assert on_own > others.mean()  # (a small test ViT: every cosine is close to 1)


def test_ease_scoring_benchmark_scores_the_trained_learner_every_way(tmp_path):
    """benchmarks/ease_scoring.py, through run_experiment's after_task hook: its default scoring is the protocol's."""
    import importlib.util
    import json

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("ease_scoring", ROOT / "benchmarks" / "ease_scoring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ease.json"
    assert bench.main(["--dataset", "shapes:20", "--protocol", "B10-Inc5", "--threads", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    curves = report["accuracy_per_task"]
    assert set(curves) == set(bench.VARIANTS) and all(len(c) == 3 for c in curves.values())
    assert report["classes_seen"] == [10, 15, 20]
    assert curves["alpha0.1"] == report["protocol_per_task"]  # the default scoring is the protocol's, hparams restored
    assert curves["alpha0.1"][-1] > 3 * 100 / 20  # well above chance
    assert len({c[-1] for c in curves.values()}) > 1  # the scorings differ on the same learner
