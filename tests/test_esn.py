"""ESN: a component per task, anchor-based energy alignment, energy voting of the task, one exported graph,
device classes through the gated-feature prototype head."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecl.data import make_shapes
from edgecl.experiment import evaluate
from edgecl.learners import create_learner
from edgecl.learners.esn import CANDIDATE_TEMPERATURES, energy, vote
from edgecl.workflows import export_run
from edgecl.rundir import load_run, save_run
from edgecl.zoo import create_backbone
from edgecl_runtime import Bundle
from edgecl_runtime.preprocess import preprocess
from peft_helpers import train_learner
from tests.conditioning import assert_top1_agrees, torch_scores


@pytest.fixture(scope="module")
def esn():
    """ESN on shapes:15, B5-Inc5 (3 tasks, 3 components) on the embedded ViT."""
    torch.set_num_threads(1)
    return train_learner("esn", create_backbone("edgecl-vit-tiny"), classes=15, increment=5, epochs=3, lr=3e-3)


def images(trained, ds, n=None):
    spec = trained.learner.backbone.spec
    return torch.from_numpy(preprocess(ds.images[:n], spec.input_size, spec.mean, spec.std))


def test_energy_and_vote_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    torch.testing.assert_close(energy(logits, 2.0), -0.5 * torch.log(torch.exp(2.0 * logits).sum(1)))
    # three tasks, three temperatures: the task with the most votes, ties to the earliest task
    per_task = [torch.randn(8, k, generator=g) * 3 for k in (2, 3, 4)]
    temps = torch.tensor([0.01, 0.5, 1.0])
    expected = []
    for i in range(8):
        votes = [int(np.argmax([torch.logsumexp(lg[i] / t, 0).item() for lg in per_task])) for t in temps.tolist()]
        counts = np.bincount(votes, minlength=3)
        expected.append(int(np.flatnonzero(counts == counts.max())[0]))
    assert vote(per_task, temps).tolist() == expected
    # one temperature: the single largest logsumexp wins
    assert vote(per_task, torch.tensor([1.0])).tolist() == torch.stack(
        [torch.logsumexp(lg, 1) for lg in per_task], 1).argmax(1).tolist()
    with pytest.raises(ValueError, match="lam must be >= 0"):
        create_learner("esn", create_backbone("edgecl-vit-tiny"), lam=-1)


def test_one_frozen_component_per_task_and_above_chance(esn):
    learner = esn.learner
    assert len(learner.components) == 3 and learner.task_of_class.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert all(not p.requires_grad for c in learner.components for p in c.parameters())
    assert learner.temperatures[0] == 0.001 and all(t in CANDIDATE_TEMPERATURES for t in learner.temperatures)
    assert esn.accuracy[0] > 2 * 100 / 5 and esn.accuracy[-1] > 2 * 100 / 15


def test_energy_alignment_pulls_each_component_to_the_anchor(esn):
    """The same first component trained with the alignment (lam = 1) has its energies on its own task's images
    much nearer the anchor than without it (lam = 0); the fixture's (lam = 0.1) lies in between."""
    from edgecl.data import BatchLoader

    learner, spec = esn.learner, esn.learner.backbone.spec
    first = esn.scenario.task_data(esn.train, 0)
    x = images(esn, first)

    def distance(lam):
        if lam is None:
            component = learner.embedding_module()
        else:
            fresh = create_learner("esn", create_backbone("edgecl-vit-tiny"), epochs=3, lr=3e-3, lam=lam)
            fresh.fit_task(BatchLoader(first, spec.input_size, spec.mean, spec.std, 64, shuffle=True, seed=0))
            component = fresh.embedding_module()
        with torch.no_grad():
            _, logits = component.branches(x)
        return float((energy(logits[0]) - learner.hp["anchor"]).abs().mean())

    plain, strong, fixture = distance(0.0), distance(1.0), distance(None)
    assert strong < 0.5 * plain and strong < fixture < plain


def test_the_vote_routes_images_and_gates_the_features(esn):
    learner = esn.learner
    x = images(esn, esn.test)
    routed = learner.routed_tasks(x)
    truth = learner.task_of_class[torch.from_numpy(esn.test.labels)]
    assert (routed == truth).float().mean() > 1 / 3  # better than a random task
    with torch.no_grad():
        feats, logits = learner.embedding_module().branches(x)
        emb = learner.embedding_module()(x)
    d = learner.backbone.embedding_dim
    for t in range(3):
        rows = routed == t
        torch.testing.assert_close(emb[rows, t * d : (t + 1) * d], F.normalize(feats[t][rows], dim=1))
        assert torch.all(emb[~rows, t * d : (t + 1) * d] == 0)
    # the paper's prediction: the routed task's own classifier
    paper = learner.paper_logits(x)
    for i in range(0, len(x), 7):
        t = int(routed[i])
        cols = torch.nonzero(learner.task_of_class == t).flatten()
        torch.testing.assert_close(paper[i, cols], logits[t][i])
        assert torch.all(torch.isinf(paper[i, learner.task_of_class != t]))


def test_export_parity_and_device_class(esn, tmp_path):
    import onnx

    learner, spec = esn.learner, esn.learner.backbone.spec
    run_dir = save_run(tmp_path / "run", {"dataset": "shapes:15", "data_seed": 0}, learner, esn.class_names, {})
    _, loaded = load_run(run_dir)
    np.testing.assert_array_equal(evaluate(loaded, esn.test, spec), evaluate(learner, esn.test, spec))
    assert loaded.temperatures == learner.temperatures
    report = export_run(run_dir, tmp_path / "bundle", check_inputs=[images(esn, esn.test, 32).numpy()])
    assert report.parity_max_abs_diff <= 1e-4
    graph = onnx.load(str(report.path / "model.onnx")).graph
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in learner.backbone.model.modules())
    assert sum(n.op_type == "Conv" for n in graph.node) == convs  # one ViT stem and pass feed the 3 components
    assert sum(n.op_type == "ReduceLogSumExp" for n in graph.node) >= 3  # the energies are in the graph
    bundle = Bundle.load(report.path)
    assert bundle.classes == esn.class_names
    assert_top1_agrees(torch_scores(learner, esn.test), bundle.scores(esn.test.images),
                       bundle.predict(esn.test.images).indices)
    # A class added on the device: its prototype is the mean of its images' gated features.
    extra, _ = make_shapes(100, 8, 1, seed=11)
    new = next(n for n in extra.class_names if n not in esn.class_names)
    examples = extra.images[np.array(extra.class_names)[extra.labels] == new]
    bundle.add_class(new, examples)
    head = Bundle.load(report.path).head
    with torch.no_grad():
        gated = learner.embedding_module()(torch.from_numpy(preprocess(examples, spec.input_size, spec.mean, spec.std)))
    np.testing.assert_allclose(head.prototypes[-1], gated.mean(0).numpy(), atol=1e-4)
    assert Bundle.load(report.path).classes[-1] == new
    assert np.mean(np.array(Bundle.load(report.path).predict(examples).labels) == new) > 0.5
