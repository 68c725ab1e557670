"""CoFiMA: diagonal Fisher, Fisher-weighted merge of the tuned blocks, one merged network in the bundle, device classes."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from edgecl.learners import cofima as cofima_module
from edgecl.learners import create_learner
from edgecl.learners.cofima import diagonal_fisher, fisher_merge
from tests.closed_form_runs import check_add_class, check_runtime_matches_torch, train_and_export


@pytest.fixture(scope="module")
def cofima_run(tmp_path_factory):
    return train_and_export("cofima", {"epochs": 1}, tmp_path_factory)


def test_diagonal_fisher_is_the_mean_squared_batch_gradient_capped():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(3)]
    params = dict(model.named_parameters())

    def loss_fn(batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    fisher = diagonal_fisher(params, batches + [None], lambda b: None if b is None else loss_fn(b), cap=1.0)
    for name, p in params.items():
        expected = sum(torch.autograd.grad(loss_fn(b), p)[0] ** 2 for b in batches) / 3  # the skipped batch not counted
        torch.testing.assert_close(fisher[name], expected)
    cap = float(fisher["weight"].median())
    capped = diagonal_fisher(params, batches, loss_fn, cap=cap)
    assert capped["weight"].max() == pytest.approx(cap) and torch.equal(capped["weight"], fisher["weight"].clamp(max=cap))


def test_fisher_merge_is_its_formula_on_a_toy_model():
    g = torch.Generator().manual_seed(1)
    prev, new = nn.Linear(3, 2), nn.Linear(3, 2)
    f_prev = {n: torch.rand(p.shape, generator=g) for n, p in prev.named_parameters()}
    f_new = {n: torch.rand(p.shape, generator=g) for n, p in new.named_parameters()}
    f_prev["bias"][0] = f_new["bias"][0] = 0.0  # a parameter no loss reached
    a = 0.4
    p0, p1 = dict(prev.named_parameters()), dict(new.named_parameters())
    merged = fisher_merge({n: p.detach() for n, p in p0.items()}, {n: p.detach() for n, p in p1.items()}, f_prev, f_new, a)
    with torch.no_grad():
        for n in p1:
            expected = ((1 - a) * f_prev[n] * p0[n] + a * f_new[n] * p1[n]) / ((1 - a) * f_prev[n] + a * f_new[n])
            if n == "bias":
                expected[0] = (1 - a) * p0[n][0] + a * p1[n][0]  # 0/0: the plain average
            torch.testing.assert_close(merged[n], expected)
    # one Fisher zero: that model's weight is ignored; equal Fishers: the plain average
    ones, zeros = {n: torch.ones_like(f) for n, f in f_new.items()}, {n: torch.zeros_like(f) for n, f in f_new.items()}
    only_new = fisher_merge({n: p.detach() for n, p in p0.items()}, {n: p.detach() for n, p in p1.items()}, zeros, ones, a)
    assert all(torch.equal(only_new[n], p1[n].detach()) for n in p1)


def test_the_learner_writes_the_fisher_merge_into_its_network(trained, monkeypatch):
    from edgecl.backbones import backbone_from_state
    from edgecl.data import BatchLoader

    base = trained[0]
    bb = base.learner.backbone
    bb = backbone_from_state(bb.spec, {k: v.clone() for k, v in bb.model.state_dict().items()})  # private copy
    learner = create_learner("cofima", bb, epochs=1)
    spec = bb.spec
    loaders = [BatchLoader(base.scenario.task_data(base.train, t), spec.input_size, spec.mean, spec.std, shuffle=True)
               for t in range(2)]
    calls = []
    real = cofima_module.fisher_merge
    monkeypatch.setattr(cofima_module, "fisher_merge", lambda *a: calls.append((a, real(*a))) or calls[-1][1])
    learner.fit_task(loaders[0])
    assert not calls and learner.fisher  # the first task is not merged
    f0 = {n: f.clone() for n, f in learner.fisher.items()}
    merged_after_0 = {n: p.detach().clone() for n, p in learner._tuned().items()}
    learner.fit_task(loaders[1])
    (prev, tuned, f_prev, f_new, alpha), merged = calls[0]
    assert alpha == 0.4 and all(torch.equal(prev[n], merged_after_0[n]) for n in prev)  # from theta*_{t-1}
    assert all(torch.equal(f_prev[n], f0[n]) for n in f0) and all(torch.equal(f_new[n], learner.fisher[n]) for n in f0)
    assert any(not torch.equal(tuned[n], prev[n]) for n in prev)  # task 2 really fine-tuned
    now = learner._tuned()
    assert all(torch.equal(now[n].detach(), merged[n]) for n in now)  # the network holds the merge
    assert any(not torch.equal(merged[n], tuned[n]) for n in now)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_bundle_is_one_merged_network_and_learns_a_class_on_the_device(cofima_run, exported, tmp_path, shapes_new):
    import onnx

    result, run_dir, bundle_dir = cofima_run
    assert result.metrics.last > 80.0  # chance 5 %
    check_runtime_matches_torch(result, bundle_dir)
    check_add_class(bundle_dir, tmp_path, shapes_new)

    def backbone_ops(path):  # the graph without the head's scoring part
        return sorted(n.op_type for n in onnx.load(str(path / "model.onnx")).graph.node if not n.name.startswith("head/"))

    assert backbone_ops(bundle_dir) == backbone_ops(exported[1])  # the same graph as SimpleCIL's bundle
    from edgecl.rundir import load_run

    _, loaded = load_run(run_dir)
    assert loaded.fisher and all(torch.equal(loaded.fisher[n], result.learner.fisher[n]) for n in loaded.fisher)


def test_bad_hparams_and_the_learners_entry(trained):
    bb = trained[0].learner.backbone
    with pytest.raises(ValueError, match="alpha"):
        create_learner("cofima", bb, alpha=1.5)
    with pytest.raises(ValueError, match="fisher_max"):
        create_learner("cofima", bb, fisher_max=0.0)
    from edgecl.cli import main

    res = CliRunner().invoke(main, ["learners", "cofima", "--json"])
    assert res.exit_code == 0, res.output
    entry = json.loads(res.stdout)
    hp = {h["name"]: h for h in entry["hparams"]}
    assert entry["summary"].startswith("CoFiMA (Marouf et al.") and hp["alpha"]["default"] == 0.4
    assert {"tune_blocks", "lr_backbone", "fisher_max"} <= set(hp) and all(h["meaning"] for h in entry["hparams"])
    assert np.isclose(hp["fisher_max"]["default"], 1e-4)
