"""EASE: one adapter per task, prototype complement, all adapters in one exported graph, device classes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecl.data import make_shapes
from edgecl.experiment import evaluate
from edgecl.learners.ease import complement
from edgecl.rundir import load_run, save_run
from export import export_run
from peft_helpers import small_vit, train_learner
from runtime import Bundle
from runtime.preprocess import preprocess


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
        torch.testing.assert_close(learner.means[c], feats[torch.from_numpy(last.labels) == c].mean(0), atol=1e-5, rtol=1e-5)


def test_ease_exports_all_adapters_in_one_graph_and_adds_classes_on_the_device(ease, tmp_path):
    import onnx

    run_dir = save_run(tmp_path / "run", {"dataset": "shapes:15", "data_seed": 0}, ease.learner, ease.class_names, {})
    _, loaded = load_run(run_dir)
    spec = ease.learner.backbone.spec
    np.testing.assert_array_equal(evaluate(loaded, ease.test, spec), evaluate(ease.learner, ease.test, spec))
    report = export_run(run_dir, tmp_path / "bundle")
    assert report.parity_max_abs_diff <= 1e-4
    graph = onnx.load(str(report.path / "backbone.onnx")).graph
    assert sum(n.op_type == "Conv" for n in graph.node) == 1  # one patch embedding feeds the 3 branches
    names = np.array(ease.class_names)[ease.test.labels]
    bundle = Bundle.load(report.path)
    device = np.mean(np.array(bundle.predict(ease.test.images).labels) == names) * 100
    torch_acc = np.mean(evaluate(ease.learner, ease.test, spec) == ease.test.labels) * 100
    assert abs(device - torch_acc) <= 0.1
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
