import numpy as np
import pytest
from click.testing import CliRunner

from edgecl.learners import create_learner
from edgecl.learners.closed_form import select_lambda
from tests.closed_form_runs import check_add_class, check_runtime_matches_torch, train_and_export

M = 512  # small enough for fast tests; the default is 2048


@pytest.fixture(scope="module")
def ranpac_run(tmp_path_factory):
    return train_and_export("ranpac", {"M": M}, tmp_path_factory)


@pytest.mark.parametrize("n", [40, 300])  # fewer rows than features (SVD) and more (eigh)
def test_select_lambda_equals_brute_force_grid(n):
    rng = np.random.default_rng(0)
    H = np.maximum(rng.standard_normal((n, 120)), 0)
    labels = rng.integers(0, 5, n)
    H[np.arange(n), labels] += 3.0
    grid = [10.0**k for k in range(-4, 5)]
    order = np.random.default_rng(7).permutation(n)
    n_val = int(round(0.2 * n))
    fit, val = order[: n - n_val], order[n - n_val :]
    Y = np.eye(5)[labels]
    mse = [np.mean((H[val] @ np.linalg.solve(H[fit].T @ H[fit] + lam * np.eye(120), H[fit].T @ Y[fit]) - Y[val]) ** 2)
           for lam in grid]
    assert select_lambda(H, labels, 5, grid, 0.2, seed=7) == grid[int(np.argmin(mse))]


def test_statistics_accumulate_exactly_over_tasks(ranpac_run):
    result, _, _ = ranpac_run
    learner, spec = result.learner, result.learner.backbone.spec
    from edgecl.data import BatchLoader

    feats, labels = learner.embed(BatchLoader(result.train, spec.input_size, spec.mean, spec.std))
    H = np.maximum(feats.numpy() @ learner.W_rand, 0).astype(np.float64)
    head = learner.head
    assert head.G.shape == (M, M) and head.num_classes == 20
    # float32 embeddings differ ~1e-7 with the batch composition (training batches were shuffled)
    np.testing.assert_allclose(head.G, H.T @ H, rtol=1e-5, atol=1e-5 * np.abs(head.G).max())
    np.testing.assert_allclose(head.Q, H.T @ np.eye(20)[labels.numpy()], rtol=1e-5, atol=1e-5 * np.abs(head.Q).max())
    np.testing.assert_array_equal(head.counts, np.bincount(labels.numpy()))
    assert head.lam in [10.0**k for k in range(-8, 9)]


def test_accuracy_and_not_below_simplecil_on_the_same_features(ranpac_run):
    from edgecl.data import BatchLoader
    from edgecl.experiment import evaluate

    result, _, _ = ranpac_run
    assert result.metrics.last > 90.0  # chance 5 %
    spec = result.learner.backbone.spec
    simple = create_learner("simplecil", result.learner.backbone)
    for t in range(result.scenario.num_tasks):
        simple.fit_task(BatchLoader(result.scenario.task_data(result.train, t), spec.input_size, spec.mean, spec.std))
    simple_acc = 100 * np.mean(evaluate(simple, result.test, spec) == result.test.labels)
    # measured 96.5-97.5 vs 94.0 over order seeds 1993, 0, 1, 2 (shapes:20, M=512); one test image is 0.5 pt
    assert result.metrics.last >= simple_acc, (result.metrics.last, simple_acc)


def test_bundle_matches_torch_and_learns_a_class_on_the_device(ranpac_run, tmp_path, shapes_new):
    result, _, bundle_dir = ranpac_run
    check_runtime_matches_torch(result, bundle_dir)
    before = result.learner.head
    b, reloaded, new = check_add_class(bundle_dir, tmp_path, shapes_new)
    from tests.conftest import class_images

    import torch

    images = class_images(shapes_new[0], new, 5)
    H = b.embed(images).astype(np.float64)  # model.onnx's features: the random projection and ReLU are in the graph
    with torch.no_grad():
        e = result.learner.embedding_module()(torch.from_numpy(b.preprocess(images))).numpy()
    np.testing.assert_allclose(H, np.maximum(e @ before.W_rand, 0), rtol=1e-4, atol=1e-4)
    head = reloaded.head
    assert head.W_rand is None and "W_rand" not in head.arrays()  # stored once, in the graph
    np.testing.assert_allclose(head.G, before.G + H.T @ H, rtol=1e-9, atol=1e-9 * np.abs(before.G).max())
    np.testing.assert_allclose(head.Q[:, -1], H.sum(0), rtol=1e-6)
    ref = np.linalg.solve(head.G + head.lam * np.eye(M), head.Q)
    assert np.abs(head.A_inv @ head.Q - ref).max() / np.abs(ref).max() <= 1e-5


def test_run_dir_round_trip_and_bad_hparams(ranpac_run):
    from edgecl.rundir import load_run

    result, run_dir, _ = ranpac_run
    _, learner = load_run(run_dir)
    x = next(iter(__import__("edgecl.data", fromlist=["BatchLoader"]).BatchLoader(
        result.test, *(lambda s: (s.input_size, s.mean, s.std))(learner.backbone.spec), batch_size=16)))[0]
    np.testing.assert_array_equal(learner.logits(x).numpy(), result.learner.logits(x).numpy())
    bb = result.learner.backbone
    with pytest.raises(ValueError, match="no hyper-parameter"):
        create_learner("ranpac", bb, lambdas=[1.0])
    with pytest.raises(ValueError, match="first_session must be one of"):
        create_learner("ranpac", bb, first_session="lora")
    with pytest.raises(ValueError, match="M"):
        create_learner("ranpac", bb, M=-1)


def test_first_session_ssf_adapts_then_freezes(trained):
    """Phase 1 with the SSF module of edgecl.peft (works on CNNs): embeddings change, state round-trips."""
    import torch

    from edgecl.data import BatchLoader

    result = trained[0]
    spec = result.learner.backbone.spec
    task0 = result.scenario.task_data(result.train, 0)
    loader = BatchLoader(task0, spec.input_size, spec.mean, spec.std, batch_size=32, shuffle=True)
    learner = create_learner("ranpac", result.learner.backbone, M=64, first_session="ssf", adapt_epochs=1, adapt_lr=0.01)
    learner.fit_task(loader)
    x = next(iter(loader))[0]
    with torch.no_grad():
        assert (learner.embedding_module()(x) - result.learner.backbone(x)).abs().max() > 1e-3
    assert not any(p.requires_grad for p in learner.peft.parameters())
    again = create_learner("ranpac", result.learner.backbone, **learner.hparams)
    again.load_state(learner.state())
    np.testing.assert_array_equal(again.logits(x).numpy(), learner.logits(x).numpy())


def test_cli_learner_arg(tmp_path):
    from edgecl.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["train", "--dataset", "shapes:10", "--learner", "ranpac", "--learner-arg", "bogus=1",
                               "--out", str(tmp_path / "r")])
    assert out.exit_code != 0 and "bogus" in out.output and "allowed" in out.output
    assert not (tmp_path / "r").exists()
    out = runner.invoke(main, ["train", "--learner-arg", "M", "--out", str(tmp_path / "r")])
    assert out.exit_code != 0 and "KEY=VALUE" in out.output
    out = runner.invoke(main, ["train", "--dataset", "shapes:10", "--learner", "ranpac", "--learner-arg", "M=32",
                               "--learner-arg", "first_session=none", "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    import json

    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["learner"]["hparams"]["M"] == 32 and run["learner"]["hparams"]["first_session"] == "none"
