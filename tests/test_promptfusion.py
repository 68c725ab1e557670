"""PromptFusion: two backbones in one graph, lam * f_A + (1 - lam) * f_B with lam by validation, device classes
in both experts from the same images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecl.data import make_shapes
from edgecl.experiment import evaluate
from edgecl.errors import ConfigError
from edgecl.learners import create_learner
from edgecl.learners.promptfusion import LAMBDA_GRID, choose_lambda
from edgecl.workflows import export_run
from edgecl.rundir import load_run, save_run
from edgecl.zoo import create_backbone
from edgecl_runtime import Bundle
from edgecl_runtime.preprocess import preprocess
from peft_helpers import train_learner
from tests.conditioning import assert_top1_agrees, torch_scores

SECOND = {"second": "edgecl-vit-tiny"}


@pytest.fixture(scope="module")
def fusion():
    """PromptFusion on shapes:15, B5-Inc5: the embedded ViT with VPT (booster) + a second, frozen copy of it
    (stabiliser; the default second backbone, the embedded ResNet-10t, is made on first use: too slow here)."""
    torch.set_num_threads(1)
    return train_learner("promptfusion", create_backbone("edgecl-vit-tiny"), classes=15, increment=5, epochs=1,
                         backbones=create_backbone, **SECOND)


def images(trained, ds, n=None):
    spec = trained.learner.backbone.spec
    return torch.from_numpy(preprocess(ds.images[:n], spec.input_size, spec.mean, spec.std))


def test_choose_lambda_picks_the_best_mixture_nearest_one_half():
    labels = np.array([0, 1, 2, 0])
    a = np.eye(3)[[0, 1, 2, 1]]  # right on 3 of 4
    b = np.eye(3)[[0, 0, 0, 0]]  # right on 2 of 4
    assert choose_lambda(a, b, labels) == 0.55  # a must outweigh b; the nearest such value to 0.5
    assert choose_lambda(b, a, labels) == 0.45
    assert choose_lambda(a, a, labels) == 0.5  # every value ties
    assert LAMBDA_GRID[0] == 0.0 and LAMBDA_GRID[-1] == 1.0
    for bad in ({"lam": 1.5}, {"val_fraction": 1.0}):
        with pytest.raises(ValueError, match="lam|val_fraction"):
            create_learner("promptfusion", create_backbone("edgecl-vit-tiny"), **bad)
    alone = create_learner("promptfusion", create_backbone("edgecl-vit-tiny"))  # no backbone factory passed in
    with pytest.raises(ConfigError, match="backbones=edgecl.zoo.create_backbone"):
        alone.second


def test_scores_are_the_lambda_mixture_of_both_experts(fusion):
    learner = fusion.learner
    x = images(fusion, fusion.test, 40)
    with torch.no_grad():
        fa = learner.peft(x)  # the prompted ViT
        fb = learner.second.model(x)  # the second backbone (same input size and normalisation here)
    protos, d = learner.prototypes, learner.embedding_module().block
    cos_a = F.normalize(fa, dim=1) @ F.normalize(protos[:, : fa.shape[1]], dim=1).T
    cos_b = F.normalize(fb, dim=1) @ F.normalize(protos[:, d : d + fb.shape[1]], dim=1).T
    lam = learner.lam
    torch.testing.assert_close(learner.logits(x), lam * cos_a + (1 - lam) * cos_b, atol=1e-5, rtol=1e-5)
    assert len(learner.lambdas) == 3 and lam == learner.lambdas[-1] and all(v in LAMBDA_GRID for v in learner.lambdas)
    assert torch.all(protos[:, fa.shape[1] : d] == 0)  # A's block is zero-padded to B's width


def test_lambda_is_validated_on_held_out_images(fusion):
    """The chosen lam is the best of the grid on the held-out part of the task's images, prototypes taken
    from the rest; a fixed lam is kept as given."""
    learner = fusion.learner
    task = fusion.scenario.task_data(fusion.train, 0)
    fresh = create_learner("promptfusion", create_backbone("edgecl-vit-tiny"), backbones=create_backbone, epochs=1, **SECOND)
    fresh.peft.load_peft_state(learner.peft.peft_state())
    fresh.peft.freeze()
    fresh.adapted = True
    with torch.no_grad():
        feats = fresh.embedding_module()(images(fusion, task)).float()
    labels = torch.from_numpy(task.labels)
    val = fresh.holdout(task.labels)
    assert 0.15 < val.mean() < 0.25 and all(val[task.labels == c].any() for c in np.unique(task.labels))
    d = fresh.embedding_module().block
    means = torch.stack([feats[~val][labels[~val] == c].mean(0) for c in range(5)])
    cos = lambda f, p: (F.normalize(f, dim=1) @ F.normalize(p, dim=1).T).numpy()
    a, b = cos(feats[val, :d], means[:, :d]), cos(feats[val, d:], means[:, d:])
    assert fresh.validate_lambda(feats, labels) == choose_lambda(a, b, task.labels[val])
    assert fresh.head is None  # validation leaves the head alone
    fixed = create_learner("promptfusion", create_backbone("edgecl-vit-tiny"), backbones=create_backbone, epochs=1, lam=0.3,
                           **SECOND)
    fixed.fit_task(_loader(fusion, task))
    assert fixed.lam == 0.3 and fixed.lambdas == [] and np.allclose(fixed.export_head()[1]["weights"], [0.3, 0.7])


def _loader(trained, ds):
    from edgecl.data import BatchLoader

    spec = trained.learner.backbone.spec
    return BatchLoader(ds, spec.input_size, spec.mean, spec.std, 64, shuffle=True, seed=0)


def test_trains_above_chance(fusion):
    assert fusion.accuracy[0] > 2 * 100 / 5 and fusion.accuracy[-1] > 2 * 100 / 15


def test_one_graph_with_both_backbones_parity_and_device_class(fusion, tmp_path):
    import onnx

    learner, spec = fusion.learner, fusion.learner.backbone.spec
    run_dir = save_run(tmp_path / "run", {"dataset": "shapes:15", "data_seed": 0}, learner, fusion.class_names, {})
    _, loaded = load_run(run_dir)
    np.testing.assert_array_equal(evaluate(loaded, fusion.test, spec), evaluate(learner, fusion.test, spec))
    assert loaded.lam == learner.lam
    # the run directory holds the second backbone itself (restored from the state, not rebuilt by name)
    run_state = np.load(run_dir / "learner_state.npz")
    assert "second_spec" in run_state and any(k.startswith("second.") for k in run_state.files)
    for k, v in learner.second.model.state_dict().items():
        assert torch.equal(loaded.second.model.state_dict()[k], v)
    report = export_run(run_dir, tmp_path / "bundle", check_inputs=[images(fusion, fusion.test, 32).numpy()])
    assert report.parity_max_abs_diff <= 1e-4
    graph = onnx.load(str(report.path / "model.onnx")).graph
    convs = sum(isinstance(m, torch.nn.Conv2d) for bb in (learner.backbone, learner.second) for m in bb.model.modules())
    assert convs == 2 * sum(isinstance(m, torch.nn.Conv2d) for m in learner.backbone.model.modules())
    assert sum(n.op_type == "Conv" for n in graph.node) == convs  # both backbones' convolutions
    assert sum(n.op_type == "Softmax" for n in graph.node) >= len(learner.backbone.model.blocks)  # the ViT's attention
    bundle = Bundle.load(report.path)
    assert bundle.manifest["head"]["kind"] == "subspace_cosine"
    assert_top1_agrees(torch_scores(learner, fusion.test), bundle.scores(fusion.test.images),
                       bundle.predict(fusion.test.images).indices)
    # a device class: both experts' prototypes from the same images, weighted (lam, 1 - lam)
    extra, _ = make_shapes(100, 8, 1, seed=11)
    new = next(n for n in extra.class_names if n not in fusion.class_names)
    examples = extra.images[np.array(extra.class_names)[extra.labels] == new]
    bundle.add_class(new, examples)
    head = Bundle.load(report.path).head
    x = torch.from_numpy(preprocess(examples, spec.input_size, spec.mean, spec.std))
    with torch.no_grad():
        fa, fb = learner.peft(x).mean(0), learner.second.model(x).mean(0)
    d = learner.embedding_module().block
    np.testing.assert_allclose(head.prototypes[-1, : len(fa)], fa.numpy(), atol=1e-4)
    np.testing.assert_allclose(head.prototypes[-1, d : d + len(fb)], fb.numpy(), atol=1e-4)
    np.testing.assert_allclose(head.weights[-1], [learner.lam, 1 - learner.lam], atol=1e-7)
    assert np.mean(np.array(Bundle.load(report.path).predict(examples).labels) == new) > 0.5


def test_second_backbone_with_other_input_is_renormalised_and_resized_in_the_graph():
    """B with another normalisation and size gets A's preprocessed images converted inside the module."""
    learner = create_learner("promptfusion", create_backbone("edgecl-vit-tiny"), backbones=create_backbone,
                             second="resnet10t", second_weights="random")
    emb = learner.embedding_module()
    spec_a, spec_b = learner.backbone.spec, learner.second.spec
    x = torch.rand(2, 3, 32, 32)
    raw = x * torch.tensor(spec_a.std)[:, None, None] + torch.tensor(spec_a.mean)[:, None, None]
    want = (raw - torch.tensor(spec_b.mean)[:, None, None]) / torch.tensor(spec_b.std)[:, None, None]
    if tuple(spec_b.input_size[1:]) != (32, 32):
        want = F.interpolate(want, size=tuple(spec_b.input_size[1:]), mode="bilinear", align_corners=False)
    torch.testing.assert_close(emb.for_b(x), want, atol=1e-5, rtol=1e-5)
    assert not emb.identity and emb.resize == (tuple(spec_b.input_size[1:]) != (32, 32))
