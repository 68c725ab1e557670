import numpy as np
import pytest

from edgecl.learners import create_learner
from edgecl_runtime.heads.gaussian import tukey
from tests.closed_form_runs import check_add_class, check_runtime_matches_torch, train_and_export


@pytest.fixture(scope="module")
def fecam_run(tmp_path_factory):
    return train_and_export("fecam", {}, tmp_path_factory)


def test_class_statistics_are_those_of_the_training_embeddings(fecam_run):
    from edgecl.data import BatchLoader

    result, _, _ = fecam_run
    learner, spec = result.learner, result.learner.backbone.spec
    assert result.metrics.last > 90.0  # chance 5 %
    feats, labels = learner.embed(BatchLoader(result.train, spec.input_size, spec.mean, spec.std))
    z = tukey(feats.numpy(), 0.5)
    head = learner.head
    for c in (0, 13):
        zc = z[labels.numpy() == c]
        np.testing.assert_allclose(head.means[c], zc.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(head.scatter[c], (zc - zc.mean(0)).T @ (zc - zc.mean(0)), rtol=1e-4, atol=1e-5)
        assert head.counts[c] == len(zc)


def test_bundle_matches_torch_and_learns_a_class_on_the_device(fecam_run, tmp_path, shapes_new):
    result, _, bundle_dir = fecam_run
    check_runtime_matches_torch(result, bundle_dir)
    before = result.learner.head
    b, reloaded, new = check_add_class(bundle_dir, tmp_path, shapes_new)
    from tests.conftest import class_images

    import torch

    images = class_images(shapes_new[0], new, 5)
    z = b.embed(images)  # the bundle's features: model.onnx applies FeCAM's Tukey transform
    with torch.no_grad():
        raw = result.learner.embedding_module()(torch.from_numpy(b.preprocess(images))).numpy()
    # compared before the square root: its slope 0.5/sqrt|x| multiplies embedding differences twenty-fold at
    # |x| ~ 7e-4, while its inverse x = sign(z) z^2 is well-conditioned, so raw holds to the embeddings' tolerance
    np.testing.assert_allclose(np.sign(z) * np.abs(z.astype(np.float64)) ** 2, raw, rtol=1e-4, atol=1e-5)
    assert reloaded.head.beta == 1.0  # the transform lives in the graph, not in the head
    head = reloaded.head
    np.testing.assert_allclose(head.means[-1], z.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head.means[:-1], before.means)  # other classes untouched
    assert head.counts[-1] == 5


def test_bad_hparams_and_round_trip(fecam_run):
    from edgecl.rundir import load_run

    result, run_dir, _ = fecam_run
    _, learner = load_run(run_dir)
    np.testing.assert_array_equal(learner.head.scatter, result.learner.head.scatter)
    bb = result.learner.backbone
    with pytest.raises(ValueError, match="no hyper-parameter"):
        create_learner("fecam", bb, alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        create_learner("fecam", bb, beta=0.0)
