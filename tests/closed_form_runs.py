"""Helpers shared by the closed-form learners' tests (RanPAC, FeCAM, SLCA): train -> export -> runtime."""

import shutil

import numpy as np

from edgecl_runtime import Bundle
from tests.conditioning import assert_top1_agrees, torch_scores
from tests.conftest import class_images


def train_and_export(learner, args, tmp_path_factory, dataset="shapes:20"):
    """A saved B10-Inc10 run of ``learner`` on ``dataset`` and its exported bundle."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run

    run_dir = tmp_path_factory.mktemp(f"{learner}-run") / "run"
    result = run_experiment(RunConfig(dataset=dataset, learner=learner, learner_args=args), out_dir=run_dir,
                            log=lambda s: None)
    out = tmp_path_factory.mktemp(f"{learner}-bundle") / "bundle"
    export_run(run_dir, out)
    return result, run_dir, out


def check_runtime_matches_torch(result, bundle_dir):
    """Runtime scores on the test split equal the torch learner's, and so does every top-1 that is no near-tie
    (``tests.conditioning``); returns the runtime top-1 accuracy (in %)."""
    b = Bundle.load(bundle_dir, device="cpu")
    assert b.manifest["head"]["kind"] == result.learner.head_kind
    pred = b.predict(result.test.images).indices
    assert_top1_agrees(torch_scores(result.learner, result.test), b.scores(result.test.images), pred)
    onnx_acc = 100 * np.mean(pred == result.test.labels)
    assert onnx_acc > 10 * 100 / len(b.classes)  # far above chance
    return onnx_acc


def check_add_class(bundle_dir, tmp_path, shapes_new):
    """``Bundle.add_class`` on a copy: an unseen class from 5 images takes over its queries, persisted."""
    train, test = shapes_new
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    b = Bundle.load(dst)
    new = "white-star"  # not among the first 30 shapes classes
    queries = class_images(test, new)
    assert new not in b.predict(queries).labels
    res = b.add_class(new, class_images(train, new, 5))
    assert res.created and res.num_classes == len(b.classes) and b.classes[-1] == new
    reloaded = Bundle.load(dst)
    hits = np.mean(np.array(reloaded.predict(queries).labels) == new)
    assert hits >= 0.7, hits
    return b, reloaded, new
