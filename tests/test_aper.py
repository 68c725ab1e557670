"""APER (adapter / SSF / VPT) and VPT learners: training, run dir round trip, export, runtime, on-device classes."""

import numpy as np
import pytest
import torch

from edgecl.zoo import create_backbone
from edgecl.data import make_shapes
from edgecl.experiment import evaluate
from edgecl.learners import LEARNERS, create_learner
from edgecl.rundir import load_run, save_run
from edgecl.workflows import export_run
from peft_helpers import small_vit, train_learner
from tests.conditioning import assert_top1_agrees, torch_scores
from edgecl_runtime import Bundle

FAST = {"epochs": 2}


def save_and_export(trained, tmp_path):
    run_dir = save_run(tmp_path / "run", {"dataset": "shapes:20", "data_seed": 0}, trained.learner, trained.class_names, {})
    report = export_run(run_dir, tmp_path / "bundle")
    return run_dir, report


def check_runtime_vs_torch(trained, bundle_dir) -> None:
    """The bundle's scores and top-1 labels on the test split equal the torch learner's (but for near-ties)."""
    test = trained.test
    b = Bundle.load(bundle_dir)
    assert b.classes == trained.class_names
    assert_top1_agrees(torch_scores(trained.learner, test), b.scores(test.images), b.predict(test.images).indices)


@pytest.fixture(scope="module")
def aper_ssf_cnn():
    """APER-SSF on the embedded CNN over shapes:20, B10-Inc10."""
    return train_learner("aper", create_backbone("edgecl-resnet10t"), peft="ssf", **FAST)


def test_aper_ssf_on_a_cnn_learns_and_adapts_only_once(aper_ssf_cnn):
    t = aper_ssf_cnn
    learner = t.learner
    assert learner.num_classes == 20 and learner.embedding_dim == 2 * learner.backbone.embedding_dim
    assert t.accuracy[-1] > 80.0  # chance 5 %
    assert learner.train_stats["accuracy"] > 0.9  # the first-session head fitted task 1
    assert all(not p.requires_grad for p in learner.peft.peft_parameters())
    scales = [p for n, p in learner.peft.peft_named_parameters().items() if n.endswith("scale")]
    assert any(not torch.equal(p, torch.ones_like(p)) for p in scales)  # trained away from the identity


def test_aper_run_dir_export_runtime_and_device_class(aper_ssf_cnn, tmp_path):
    t = aper_ssf_cnn
    run_dir, report = save_and_export(t, tmp_path)
    _, loaded = load_run(run_dir)  # PEFT weights come back from the run dir
    spec = t.learner.backbone.spec
    np.testing.assert_array_equal(evaluate(loaded, t.test, spec), evaluate(t.learner, t.test, spec))
    assert report.parity_max_abs_diff <= 1e-4
    check_runtime_vs_torch(t, report.path)
    # A class never trained on, added on the device from 5 examples.
    extra, _ = make_shapes(100, 5, 1, seed=11)
    _, fresh = make_shapes(100, 1, 20, seed=12)
    new = next(n for n in extra.class_names if n not in t.class_names)
    bundle = Bundle.load(report.path)
    test_new = fresh.images[np.array(fresh.class_names)[fresh.labels] == new]
    assert new not in bundle.predict(test_new).labels
    bundle.add_class(new, extra.images[np.array(extra.class_names)[extra.labels] == new])
    hits = np.mean(np.array(Bundle.load(report.path).predict(test_new).labels) == new)
    assert hits > 0.5


@pytest.fixture(scope="module")
def vit():
    return small_vit()


@pytest.mark.parametrize(
    "name, hparams", [("aper", {"peft": "adapter"}), ("vpt", {"deep": True})]
)
def test_vit_learners_train_export_and_match_the_runtime(vit, name, hparams, tmp_path):
    t = train_learner(name, vit, **hparams, **FAST)
    chance = 100.0 / 20
    assert t.accuracy[-1] > 2 * chance
    first = {k: v.clone() for k, v in t.learner.peft.peft_state().items()}
    _, report = save_and_export(t, tmp_path)
    assert report.parity_max_abs_diff <= 1e-4
    check_runtime_vs_torch(t, report.path)
    dim = vit.embedding_dim * (2 if name == "aper" else 1)
    assert t.learner.embedding_module()(torch.zeros(1, 3, 32, 32)).shape == (1, dim)
    assert all(torch.equal(v, t.learner.peft.peft_state()[k]) for k, v in first.items())  # frozen after task 1


def test_hyper_parameters_are_validated():
    bb = small_vit(depth=1)
    assert {"aper", "vpt", "ease"} <= set(LEARNERS)
    with pytest.raises(ValueError, match="no hyper-parameter.*bogus.*allowed: .*peft"):
        create_learner("aper", bb, bogus=1)
    with pytest.raises(ValueError, match="peft must be one of adapter, ssf, vpt_shallow, vpt_deep"):
        create_learner("aper", bb, peft="lora")
    with pytest.raises(ValueError, match="epochs"):
        create_learner("vpt", bb, epochs="many")
    with pytest.raises(ValueError, match="must be > 0"):
        create_learner("aper", bb, lr=0)
    learner = create_learner("vpt", bb, deep="true", epochs="3", lr="0.02")  # CLI strings
    assert learner.hparams["deep"] is True and learner.hparams["epochs"] == 3 and learner.hparams["lr"] == 0.02
    assert learner.peft.method == "vpt_deep"
    with pytest.raises(ValueError, match="needs a timm VisionTransformer"):
        create_learner("aper", create_backbone("resnet10t", weights="random", img_size=32), peft="adapter")


@pytest.mark.slow
@pytest.mark.parametrize("name, hparams", [("aper", {"peft": "adapter"}), ("aper", {"peft": "ssf"}), ("vpt", {}), ("ease", {})])
def test_on_the_embedded_vit_adaptation_is_not_worse_than_simplecil(name, hparams):
    """The survey's claim on a real pre-trained ViT (here: the embedded one, when its weights are committed)."""
    from edgecl.zoo.embedded import SHIPPED

    if "edgecl-vit-tiny" not in SHIPPED:
        pytest.skip("the embedded ViT's weights are not committed")
    bb = create_backbone("edgecl-vit-tiny")
    base = train_learner("simplecil", bb, classes=30)
    adapted = train_learner(name, bb, classes=30, **hparams)
    assert adapted.accuracy[-1] >= base.accuracy[-1] - 2.0
