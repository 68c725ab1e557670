"""LAE: online module by masked cross-entropy, offline module by EMA, both experts in one graph, folding, device classes."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecl.data import BatchLoader
from edgecl.learners import create_learner
from edgecl.learners.lae import ema_update
from edgecl.peft import PeftModel
from edgecl.workflows import export_run
from edgecl.rundir import load_run, save_run
from edgecl_runtime import Bundle
from peft_helpers import small_vit, train_learner
from tests.closed_form_runs import check_add_class, check_runtime_matches_torch
from tests.conditioning import assert_top1_agrees, torch_scores


@pytest.fixture(scope="module")
def lae_run(tmp_path_factory):
    """LAE (adapter) on the embedded ViT, shapes:20 B10-Inc10, saved and exported."""
    from edgecl.experiment import RunConfig, run_experiment

    run_dir = tmp_path_factory.mktemp("lae-run") / "run"
    cfg = RunConfig(dataset="shapes:20", backbone="edgecl-vit-tiny", learner="lae", learner_args={"epochs": 1})
    result = run_experiment(cfg, out_dir=run_dir, log=lambda s: None)
    out = tmp_path_factory.mktemp("lae-bundle") / "bundle"
    report = export_run(run_dir, out)
    return result, run_dir, out, report


def _tasks(classes=10, increment=5):
    from edgecl.data import load_dataset
    from edgecl.protocol import ClassIncremental

    train, _ = load_dataset(f"shapes:{classes}", image_size=(32, 32), seed=0, train_per_class=10, test_per_class=1)
    scenario = ClassIncremental(classes, increment, increment, seed=1993)
    train = scenario.remap(train)
    return [BatchLoader(scenario.task_data(train, t), (3, 32, 32), (0.5,) * 3, (0.5,) * 3, 32, shuffle=True, seed=t)
            for t in range(scenario.num_tasks)]


def _pet(learner, which):
    return {k: v.clone() for k, v in getattr(learner, which).peft_state().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_ema_update_is_its_formula():
    bb = small_vit()
    on, off = PeftModel(bb.model, "ssf"), PeftModel(bb.model, "ssf")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*on.peft_parameters(), *off.peft_parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    before_on, before_off = on.peft_state(), off.peft_state()
    ema_update(off, on, 0.9)
    after = off.peft_state()
    for k in after:
        torch.testing.assert_close(after[k], 0.9 * before_off[k] + 0.1 * before_on[k])
    assert _equal(on.peft_state(), before_on)  # the online module is only read


def test_accumulation_masking_and_calibrated_speed():
    """Offline = copy after task 1, then EMA per step; old head rows untouched (masked logits); freeze epochs."""
    loaders = _tasks()
    runs = {}
    for label, args in {"ema": {"freeze_epochs": 0}, "copy": {"freeze_epochs": 0, "ema_decay": 0.0},
                        "frozen": {"freeze_epochs": 1}}.items():
        learner = create_learner("lae", small_vit(), epochs=1, **args)
        learner.fit_task(loaders[0])
        first = (_pet(learner, "online"), _pet(learner, "offline"), learner.weight.clone())
        learner.fit_task(loaders[1])
        runs[label] = (learner, first)
    learner, (on1, off1, w1) = runs["ema"]
    assert _equal(on1, off1)  # after the first task the offline module is the online one
    on2, off2 = _pet(learner, "online"), _pet(learner, "offline")
    assert not _equal(on2, on1) and not _equal(off2, off1) and not _equal(off2, on2)  # EMA: in between
    assert torch.equal(learner.weight[:5], w1) and learner.weight.shape == (10, 96)  # masked: old rows unchanged
    learner, _ = runs["copy"]
    assert _equal(_pet(learner, "offline"), _pet(learner, "online"))  # decay 0: offline follows every step
    learner, (on1, _, w1) = runs["frozen"]
    assert _equal(_pet(learner, "online"), on1)  # all of task 2's epochs frozen: only the new head rows learned
    assert not torch.equal(learner.weight[5:], torch.zeros(5, 96)) and torch.equal(learner.weight[:5], w1)


def test_trains_exports_both_experts_in_one_graph_and_adds_a_class_on_the_device(lae_run, tmp_path, shapes_new):
    import onnx

    result, _, bundle_dir, report = lae_run
    assert result.metrics.last > 50.0  # chance 5 %
    assert report.parity_max_abs_diff <= 1e-4
    check_runtime_matches_torch(result, bundle_dir)
    graph = onnx.load(str(bundle_dir / "model.onnx")).graph
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in result.learner.backbone.model.modules())
    assert sum(n.op_type == "Conv" for n in graph.node) == convs  # one patch embedding (stem) feeds both experts
    b, reloaded, new = check_add_class(bundle_dir, tmp_path, shapes_new)
    from tests.conftest import class_images

    head = reloaded.head
    assert head.kind == "subspace_cosine" and head.prototypes.shape[1] == 2 * 192
    feats = b.embed(class_images(shapes_new[0], new, 5))
    np.testing.assert_allclose(head.prototypes[-1], feats.mean(0), rtol=1e-5, atol=1e-5)  # real in both experts
    np.testing.assert_array_equal(head.weights[-1], [1.0, 1.0])


def test_scores_are_the_sum_of_both_experts_cosines(lae_run):
    result = lae_run[0]
    learner = result.learner
    spec = learner.backbone.spec
    x = next(iter(BatchLoader(result.test, spec.input_size, spec.mean, spec.std, batch_size=8)))[0]
    with torch.no_grad():
        on, off = learner.online(x), learner.offline(x)
    d = spec.embedding_dim
    cos = torch.nn.functional.cosine_similarity
    protos = learner.prototypes
    expected = torch.stack([cos(on, protos[c, :d][None]) + cos(off, protos[c, d:][None]) for c in range(20)], dim=1)
    torch.testing.assert_close(learner.logits(x), expected, rtol=1e-5, atol=1e-5)


def test_folded_ssf_experts_equal_the_modules_and_export_without_them(tmp_path):
    import onnx

    run = train_learner("lae", small_vit(), classes=10, increment=5, epochs=1, pet="ssf")
    learner, spec = run.learner, run.learner.backbone.spec
    folded = create_learner("lae", learner.backbone, epochs=1, pet="ssf", fold=True)
    folded.load_state(learner.state())
    x = next(iter(BatchLoader(run.test, spec.input_size, spec.mean, spec.std, batch_size=16)))[0]
    with torch.no_grad():
        torch.testing.assert_close(folded.embedding_module()(x), learner.embedding_module()(x), rtol=1e-4, atol=1e-5)
    # folding re-associates float sums: labels may differ only where the scores nearly tie
    folded_scores = torch_scores(folded, run.test)
    assert_top1_agrees(torch_scores(learner, run.test), folded_scores, folded_scores.argmax(1))
    counts = {}
    for label, lrn in (("modules", learner), ("folded", folded)):
        run_dir = save_run(tmp_path / label, {"dataset": "shapes:10", "data_seed": 0}, lrn, run.class_names, {})
        report = export_run(run_dir, tmp_path / f"{label}-bundle")
        assert report.parity_max_abs_diff <= 1e-4
        nodes = onnx.load(str(report.path / "model.onnx")).graph.node
        counts[label] = sum(n.op_type == "Mul" for n in nodes)
    assert counts["folded"] < counts["modules"] - 20  # every SSF's Mul is gone
    _, reloaded = load_run(tmp_path / "folded")
    assert reloaded.hp["fold"] and isinstance(reloaded.embedding_module(), type(folded.embedding_module()))


def test_bad_hparams_and_the_learners_entry():
    bb = small_vit()
    with pytest.raises(ValueError, match="fold=true needs pet=ssf: .*ReLU"):
        create_learner("lae", bb, fold=True)
    with pytest.raises(ValueError, match="ema_decay"):
        create_learner("lae", bb, ema_decay=1.0)
    with pytest.raises(ValueError, match="freeze_epochs"):
        create_learner("lae", bb, epochs=2, freeze_epochs=3)
    from edgecl.cli import main

    res = CliRunner().invoke(main, ["learners", "lae", "--json"])
    assert res.exit_code == 0, res.output
    entry = json.loads(res.stdout)
    assert entry["summary"].startswith("LAE (Gao et al.")
    hp = {h["name"]: h for h in entry["hparams"]}
    assert hp["pet"]["choices"] == ["adapter", "ssf", "vpt_shallow", "vpt_deep"] and hp["ema_decay"]["default"] == 0.995
    assert all(h["meaning"] for h in entry["hparams"])
