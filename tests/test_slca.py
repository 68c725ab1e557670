import numpy as np
import pytest
import torch

from edgecl.data import BatchLoader
from edgecl.learners import create_learner
from edgecl.learners.slca import last_blocks
from tests.closed_form_runs import check_add_class, check_runtime_matches_torch, train_and_export


@pytest.fixture(scope="module")
def slca_run(tmp_path_factory):
    return train_and_export("slca", {}, tmp_path_factory)


def test_slow_learner_fine_tunes_only_the_last_block_and_aligns_in_closed_form(trained):
    base = trained[0]
    from edgecl.backbones import backbone_from_state

    bb = base.learner.backbone
    bb = backbone_from_state(bb.spec, {k: v.clone() for k, v in bb.model.state_dict().items()})  # private copy
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    learner = create_learner("slca", bb, epochs=1)
    tuned = {n for n, p in bb.model.named_parameters() if any(p is q for q in last_blocks(bb.model, 1))}
    spec = bb.spec
    loaders = [BatchLoader(base.scenario.task_data(base.train, t), spec.input_size, spec.mean, spec.std, shuffle=True)
               for t in range(2)]
    learner.fit_task(loaders[0])
    G0 = learner.head.G.copy()
    learner.fit_task(loaders[1])
    after = bb.model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= tuned and all(n.startswith("layer4.") for n in tuned)  # real fine-tuning, last block
    assert not any(p.requires_grad for p in bb.model.parameters())  # frozen again
    # closed-form alignment: task 1 added exactly its features (from the backbone after task 1) to G
    feats, _ = learner.embed(BatchLoader(base.scenario.task_data(base.train, 1), spec.input_size, spec.mean, spec.std))
    H = feats.numpy().astype(np.float64)
    np.testing.assert_allclose(learner.head.G - G0, H.T @ H, rtol=1e-4, atol=1e-5 * np.abs(H.T @ H).max())
    assert learner.head.W_rand is None and learner.num_classes == 20


def test_bundle_matches_torch_and_learns_a_class_on_the_device(slca_run, tmp_path, shapes_new):
    result, _, bundle_dir = slca_run
    assert result.metrics.last > 80.0  # chance 5 %
    check_runtime_matches_torch(result, bundle_dir)
    before = result.learner.head
    b, reloaded, new = check_add_class(bundle_dir, tmp_path, shapes_new)
    from tests.conftest import class_images

    H = b.embed(class_images(shapes_new[0], new, 5)).astype(np.float64)
    head = reloaded.head
    np.testing.assert_allclose(head.G, before.G + H.T @ H, rtol=1e-9, atol=1e-9 * np.abs(before.G).max())
    ref = np.linalg.solve(head.G + head.lam * np.eye(head.G.shape[0]), head.Q)
    assert np.abs(head.A_inv @ head.Q - ref).max() / np.abs(ref).max() <= 1e-5


def test_exported_backbone_is_the_fine_tuned_one(slca_run):
    from edgecl.rundir import load_run

    result, run_dir, _ = slca_run
    _, learner = load_run(run_dir)
    spec = learner.backbone.spec
    x = next(iter(BatchLoader(result.test, spec.input_size, spec.mean, spec.std, batch_size=16)))[0]
    np.testing.assert_allclose(learner.logits(x).numpy(), result.learner.logits(x).numpy(), rtol=1e-5, atol=1e-5)


def test_bad_hparams(trained):
    bb = trained[0].learner.backbone
    with pytest.raises(ValueError, match="no hyper-parameter"):
        create_learner("slca", bb, lr=0.1)
    with pytest.raises(ValueError, match="lr_head"):
        create_learner("slca", bb, lr_head=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        create_learner("slca", bb, val_fraction=1.5)
