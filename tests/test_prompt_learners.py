"""Prompt learners (L2P, DualPrompt, CODA-Prompt): training, single-graph export, runtime parity, device learning."""

import json

import numpy as np
import pytest
import torch

from edgecl.learners import create_learner
from tests.conftest import class_images

VIT = {"backbone": "vit_tiny_patch16_224", "weights": "random", "img_size": 32}
CASES = {
    "l2p": ("l2p", {"length": 2, "top_n": 2}),
    "dualprompt": ("dualprompt", {}),
    "coda_prompt": ("coda_prompt", {}),
    "dualprompt-proto": ("dualprompt", {"head": "prototype"}),
}
SELECTION_OPS = {"l2p": {"TopK", "Gather"}, "dualprompt": {"ArgMax", "Gather"}, "coda_prompt": {"Einsum"}}
NEW = "white-circle"  # held out for the device


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Circles of 9 colours as an .npz source, and images of the held-out white circles.

    A randomly initialised ViT (the tests cannot wait for a pre-trained one) separates
    colours but not shapes, so these are the classes it can learn in one epoch.
    """
    from edgecl.data import make_shapes

    train, test = make_shapes(100, 30, 10, seed=0)
    names = [n for n in train.class_names if n.endswith("-circle") and n != NEW]

    def pick(ds):
        named = np.array(ds.class_names)[ds.labels]
        idx = np.nonzero(np.isin(named, names))[0]
        return ds.images[idx], np.array([names.index(n) for n in named[idx]])

    (xtr, ytr), (xte, yte) = pick(train), pick(test)
    path = tmp_path_factory.mktemp("data") / "circles.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(names))
    return path, class_images(train, NEW, 5), class_images(test, NEW)


@pytest.fixture(scope="module", params=list(CASES))
def run(request, colours, tmp_path_factory):
    """A learner trained on the 9 circle classes (B5-Inc4, 1 epoch), saved and exported."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run
    from edgecl_runtime.preprocess import preprocess

    torch.set_num_threads(1)
    learner, hp = CASES[request.param]
    base = tmp_path_factory.mktemp(request.param)
    cfg = RunConfig(
        dataset=str(colours[0]), learner=learner, learner_args=dict(hp, epochs=1), init_cls=5, increment=4,
        batch_size=16, **VIT,
    )
    result = run_experiment(cfg, out_dir=base / "run", log=lambda s: None)
    spec = result.learner.backbone.spec
    check = [preprocess(result.test.images[:16], spec.input_size, spec.mean, spec.std)]
    report = export_run(base / "run", base / "bundle", check_inputs=check)
    return request.param, result, report


def test_trains_above_chance(run):
    _, result, _ = run
    assert result.metrics.overall[0] > 1.5 * 100 / 5  # task 1: 5 classes
    assert result.metrics.last > 100 / 9


def test_one_graph_with_selection_inside(run):
    import onnx

    case, _, report = run
    m = json.loads((report.path / "manifest.json").read_text())
    assert set(m["files"]) == {"model.onnx", "head-000000.safetensors"}
    assert m["head"]["kind"] == ("prototype_cosine" if case.endswith("proto") else "linear")
    graph = onnx.load(str(report.path / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert SELECTION_OPS[case.split("-")[0]] <= ops
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert report.parity_max_abs_diff <= 1e-4


def test_runtime_matches_torch_on_test_split(run):
    from edgecl_runtime import Bundle
    from edgecl_runtime.preprocess import preprocess
    from tests.conditioning import assert_top1_agrees

    _, result, report = run
    learner, test, spec = result.learner, result.test, result.learner.backbone.spec
    b = Bundle.load(report.path, device="cpu")
    x = torch.from_numpy(preprocess(test.images, spec.input_size, spec.mean, spec.std))
    with torch.no_grad():
        ref = learner.embedding_module()(x).numpy()
    assert np.max(np.abs(b.embed(test.images, batch_size=37) - ref)) <= 1e-4  # odd batches: dynamic axis
    with torch.no_grad():
        ref_scores = learner.scores(torch.from_numpy(ref)).numpy()
    assert_top1_agrees(ref_scores, b.scores(test.images), b.predict(test.images).indices)


def test_linear_bundle_refuses_device_learning(run, tmp_path, colours):
    import shutil

    from edgecl_runtime import Bundle, InvalidInputError

    case, _, report = run
    if case.endswith("proto"):
        pytest.skip("prototype head")
    shutil.copytree(report.path, tmp_path / "b")
    files = lambda: {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file() and not p.name.startswith(".")}
    before = files()
    b = Bundle.load(tmp_path / "b")
    with pytest.raises(InvalidInputError, match="cannot learn classes on the device.*head=prototype"):
        b.add_class(NEW, colours[1])
    assert files() == before


def test_prototype_bundle_adds_a_class_on_the_device(run, tmp_path, colours):
    import shutil

    from edgecl_runtime import Bundle

    case, _, report = run
    if not case.endswith("proto"):
        pytest.skip("linear head")
    shutil.copytree(report.path, tmp_path / "b")
    b = Bundle.load(tmp_path / "b")
    new, examples, queries = NEW, colours[1], colours[2]
    res = b.add_class(new, examples)
    assert res.created and res.num_classes == 10
    # closed form: the new prototype is the mean prompted embedding of the examples
    np.testing.assert_allclose(b.head.prototypes[-1], b.embed(examples).mean(axis=0), rtol=0, atol=1e-6)
    reloaded = Bundle.load(tmp_path / "b")
    assert reloaded.classes[-1] == new
    assert np.mean(np.array(reloaded.predict(queries).labels) == new) >= 0.8
    # old classes still scored against unchanged prototypes
    np.testing.assert_array_equal(reloaded.head.prototypes[:-1], Bundle.load(report.path).head.prototypes)


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda_prompt"])
def test_hparams_are_validated(name):
    from edgecl.zoo import create_backbone

    bb = create_backbone(VIT["backbone"], weights="random", img_size=32)
    with pytest.raises(ValueError, match="allowed: .*epochs"):
        create_learner(name, bb, nope=1)
    with pytest.raises(ValueError, match="head must be one of"):
        create_learner(name, bb, head="svm")
    with pytest.raises(ValueError, match="epochs"):
        create_learner(name, bb, epochs="two")
    with pytest.raises(ValueError, match="> 0"):
        create_learner(name, bb, lr=0)
    layers = {"l2p": None, "dualprompt": "e_layers", "coda_prompt": "layers"}[name]
    if layers:
        with pytest.raises(ValueError, match="do not exist"):
            create_learner(name, bb, **{layers: "3,12"})
    learner = create_learner(name, bb, epochs="2", lr="0.5")  # CLI strings are coerced
    assert learner.hparams["epochs"] == 2 and learner.hparams["lr"] == 0.5 and "seed" in learner.hparams


def test_prompt_learners_need_a_vit():
    from edgecl.zoo import create_backbone

    with pytest.raises(ValueError, match="timm VisionTransformer"):
        create_learner("l2p", create_backbone("resnet10t", weights="random"))


def test_linear_head_scores_and_class_removal():
    from edgecl_runtime.errors import CorruptBundleError
    from edgecl_runtime.heads import head_class

    rng = np.random.default_rng(0)
    w, bias, counts = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32), np.ones(4)
    head = head_class("linear").from_arrays({"weight": w, "bias": bias, "counts": counts.astype(np.int64)}, 4, 6)
    e = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(head.scores(e), e @ w.T + bias, rtol=1e-6)
    smaller = head.without_class(1)
    np.testing.assert_array_equal(smaller.scores(e), head.scores(e)[:, [0, 2, 3]])
    with pytest.raises(CorruptBundleError, match="do not match"):
        head_class("linear").from_arrays(head.arrays(), 5, 6)


def test_prompted_pass_without_prompts_is_the_frozen_model():
    from edgecl.zoo import create_backbone
    from edgecl.peft.base import vit_tokens
    from edgecl.peft.prompts import prompted_features

    bb = create_backbone(VIT["backbone"], weights="random", img_size=32)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(prompted_features(bb.model, vit_tokens(bb.model, x)), bb(x), rtol=0, atol=1e-6)


def test_l2p_takes_the_top_n_prompts_by_key_similarity():
    from edgecl.peft.prompts import L2PPool

    pool = L2PPool(dim=4, size=4, length=1, top_n=2)
    with torch.no_grad():
        pool.keys.copy_(torch.eye(4))
        pool.prompts.copy_(torch.arange(4.0)[:, None, None].expand(4, 1, 4))
    q = torch.tensor([[0.1, 0.9, 0.0, 0.5], [1.0, 0.0, 0.2, 0.0]])
    p = pool(q)
    assert p.insert[:, :, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]  # best key first
    assert p.aux_loss.item() == pytest.approx(float((2 - torch.nn.functional.normalize(q)[[0, 0, 1, 1], [1, 3, 0, 2]].view(2, 2).sum(1)).mean()))


def test_dualprompt_uses_the_task_whose_key_matches_and_freezes_old_tasks():
    from edgecl.peft.prompts import DualPromptPool

    pool = DualPromptPool(dim=4, g_layers=(0,), e_layers=(1, 2), g_length=1, e_length=2)
    pool.add_task()
    pool.add_task()
    assert not pool.e_prompts[0].requires_grad and pool.e_prompts[1].requires_grad and pool.g_prompt.requires_grad
    with torch.no_grad():
        pool.e_keys[0].copy_(torch.tensor([1.0, 0, 0, 0]))
        pool.e_keys[1].copy_(torch.tensor([0, 1.0, 0, 0]))
    p = pool(torch.tensor([[0.2, 1.0, 0, 0], [1.0, 0.1, 0, 0]]))
    torch.testing.assert_close(p.prefixes[1][0], pool.e_prompts[1][0])
    torch.testing.assert_close(p.prefixes[2][1], pool.e_prompts[0][1])
    torch.testing.assert_close(p.prefixes[0][1], pool.g_prompt[0])
    assert set(p.prefixes) == {0, 1, 2} and p.prefixes[1].shape == (2, 2, 2, 4)


def test_coda_grows_orthogonal_components_and_freezes_old_ones():
    from edgecl.peft.prompts import CodaPromptPool

    pool = CodaPromptPool(dim=16, layers=(0, 3), length=2, per_task=3)
    pool.add_task()
    old = [t.detach().clone() for t in (pool.comps[0], pool.keys[0], pool.attn[0])]
    pool.add_task()
    assert [p.requires_grad for p in pool.keys] == [False, True]
    keys = torch.cat(list(pool.keys), dim=1)  # (layers, 6, 16): Gram-Schmidt across tasks
    torch.testing.assert_close(keys @ keys.transpose(1, 2), torch.eye(6).expand(2, 6, 6), rtol=0, atol=1e-5)
    p = pool(torch.randn(5, 16), task=1)
    assert p.aux_loss.item() < 1e-8  # orthonormal pool: no penalty yet
    (sum(v.sum() for v in p.prefixes.values()) + p.aux_loss).backward()
    assert pool.comps[0].grad is None and pool.keys[0].grad is None and pool.attn[0].grad is None
    assert pool.comps[1].grad is not None and pool.keys[1].grad.abs().sum() > 0
    for before, after in zip(old, (pool.comps[0], pool.keys[0], pool.attn[0])):
        assert torch.equal(before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda_prompt"])
def test_pretrained_vit_learns_shapes(name, tmp_path):
    """On the embedded pre-trained ViT, shapes:20 (colour x shape) is learned well above chance."""
    from edgecl.zoo.embedded import weights_path
    from edgecl.experiment import RunConfig, run_experiment

    if not weights_path("edgecl-vit-tiny").is_file():
        pytest.skip("edgecl-vit-tiny weights are not made (edgecl pretrain --arch vit)")
    cfg = RunConfig(dataset="shapes:20", backbone="edgecl-vit-tiny", learner=name, learner_args={"epochs": 2})
    result = run_experiment(cfg, log=lambda s: None)
    assert result.metrics.overall[0] > 3 * 100 / 10
    assert result.metrics.last > 3 * 100 / 20
