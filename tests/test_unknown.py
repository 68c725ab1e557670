"""Unknown images: the score, its calibration at export, and what the device does with it (issue 30)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl_runtime import Bundle, IncompatibleBundleError, store, unknown
from edgecl_runtime.heads import head_class
from tests.conftest import class_images
from tests.fixtures import copy_fixture, embeddings, with_head_kind



def new_classes(b, ds, n=5):
    return [c for c in ds.class_names if c not in b.classes][:n]


def accepted(b, images, **kw):
    return 1.0 - b.predict(images, unknown="auto", **kw).unknown.mean()


# ------------------------------------------------------------------ measures
def test_auroc_and_fpr_match_their_definitions():
    rng = np.random.default_rng(0)
    k, u = rng.normal(size=300), rng.normal(size=200) + 1.0
    k[:10] = u[:10]  # ties count half
    pairs = (u[None, :] > k[:, None]).mean() + 0.5 * (u[None, :] == k[:, None]).mean()
    assert unknown.auroc(k, u) == pytest.approx(pairs, abs=1e-12)
    t = unknown.threshold_for(k, 0.95)
    assert np.mean(k <= t) >= 0.95 and np.mean(k < t) < 0.95
    assert unknown.fpr_at_tpr(k, u, 0.95) == pytest.approx(np.mean(u <= t))


@pytest.mark.parametrize("kind", ["prototype_cosine", "ridge", "gaussian"])
def test_leave_one_out_cosine_equals_the_head_without_the_image(kind, tmp_path):
    """Calibration compares a training image with its class mean *without* it: exact, as removing it from the head."""
    head = store.read_state(with_head_kind(copy_fixture(tmp_path / "b"), kind)).head
    x = embeddings(7, 4, head.dim)
    head = head.with_examples(1, x)  # the images are examples of class 1 now
    loo = head.cosines(x, np.array([1, 1, 1, 1]))
    for i in range(4):
        without = head.without_examples(1, x[i : i + 1])
        # the head keeps its means in float32 (prototypes; ridge weights): cosines agree to float32 rounding
        np.testing.assert_allclose(loo[i], without.cosines(x[i : i + 1])[0], rtol=0, atol=1e-6)


def test_calibration_reaches_its_target_and_sees_held_out_classes():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(12, 32)) * 3
    labels = np.repeat(np.arange(12), 20)
    x = (centres[labels] + rng.normal(size=(240, 32))).astype(np.float32)
    head = head_class("prototype_cosine")(np.stack([x[labels == c].mean(0) for c in range(12)]), np.full(12, 20))
    rec = unknown.calibrate(head, x, labels, target=0.9)
    assert rec["score"] == "nearest_cosine" and rec["target_acceptance"] == 0.9
    cos = unknown.class_cosines(head, x, labels, rec["noise_ratio"])
    assert np.mean(1 - cos.max(axis=1) <= rec["threshold"]) >= 0.9
    cal = rec["calibration"]
    assert cal["folds"] == 5 and cal["pseudo_unknown_auroc"] > 0.9 and cal["pseudo_unknown_accepted"] < 0.2


# ------------------------------------------------------------ on the device
def test_a_never_taught_class_is_rejected_far_more_often_than_a_taught_one(bundle_dir, shapes_new):
    shapes_new = shapes_new[1]
    b = Bundle.load(bundle_dir)
    rec = b.manifest["unknown"]
    assert rec["score"] == "nearest_cosine" and rec["target_acceptance"] == 0.95 and rec["threshold"] is not None
    known = np.isin(np.array(shapes_new.class_names)[shapes_new.labels], b.classes)
    p = b.predict(shapes_new.images, unknown="auto")
    assert all(label is None for label, rej in zip(p.labels, p.unknown) if rej)
    known_acc, unknown_acc = 1 - p.unknown[known].mean(), 1 - p.unknown[~known].mean()
    assert known_acc >= 0.85 and unknown_acc <= 0.3, (known_acc, unknown_acc)
    assert unknown.auroc(p.unknown_scores[known], p.unknown_scores[~known]) > 0.9
    # without a threshold nothing is rejected, and the scores are the same
    q = b.predict(shapes_new.images)
    assert not q.unknown.any() and q.threshold is None
    np.testing.assert_array_equal(q.unknown_scores, p.unknown_scores)


def test_a_class_added_on_the_device_from_5_images_is_accepted_like_a_trained_one(bundle_dir, shapes_new):
    train, test = shapes_new
    b = Bundle.load(bundle_dir)
    known = np.isin(np.array(test.class_names)[test.labels], b.classes)
    trained_rate = accepted(b, test.images[known])
    rates = []
    for name in new_classes(b, test):
        b.add_class(name, class_images(train, name, 5))
        rates.append(accepted(b, class_images(test, name)))
    assert np.mean(rates) >= trained_rate - 0.1, (rates, trained_rate)


def test_the_threshold_survives_every_bundle_operation(bundle_dir, shapes_new, tmp_path):
    shapes_new = shapes_new[1]
    b = Bundle.load(bundle_dir)
    record = b.manifest["unknown"]
    before = b.predict(shapes_new.images).unknown_scores
    other = shutil.copytree(bundle_dir, tmp_path / "other", ignore=shutil.ignore_patterns(".ort-cache"))
    a, c = new_classes(b, shapes_new, 2)
    b.add_class(a, class_images(shapes_new, a, 5))
    Bundle.load(other).add_class(c, class_images(shapes_new, c, 5))
    b.merge(other)
    assert b.manifest["unknown"] == record and {a, c} <= set(b.classes)
    b.compact()
    assert Bundle.load(bundle_dir).manifest["unknown"] == record
    b.remove_class(a)
    b.remove_class(c)
    np.testing.assert_allclose(b.predict(shapes_new.images, unknown="auto").unknown_scores, before, rtol=0, atol=1e-6)
    b.rollback(b.history()["updates"][0]["seq"])
    assert Bundle.load(bundle_dir).manifest["unknown"] == record


@pytest.mark.parametrize("kind", ["prototype_cosine", "ridge", "gaussian", "subspace_cosine"])
def test_every_head_kind_reports_an_unknown_score(kind, tmp_path):
    b = Bundle.load(with_head_kind(copy_fixture(tmp_path / "b"), kind))
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    p = b.predict(x)
    assert p.unknown_scores.shape == (6,) and np.all(np.isfinite(p.unknown_scores))
    assert b.unknown_score_name() == "nearest_cosine"
    cut = float(np.median(p.unknown_scores))
    q = b.predict(x, unknown=cut)
    assert list(q.unknown) == list(p.unknown_scores > cut)


def test_a_bundle_without_calibration_needs_a_number(tmp_path):
    b = Bundle.load(copy_fixture(tmp_path / "b"))  # exported before the unknown section existed
    with pytest.raises(IncompatibleBundleError, match="no calibrated unknown threshold"):
        b.predict(np.zeros((1, 16, 16, 3), np.uint8), unknown="auto")
    assert b.predict(np.zeros((1, 16, 16, 3), np.uint8), unknown=10.0).labels[0] is not None


# ---------------------------------------------------------------------- CLI
def test_cli_predict_and_eval_with_unknown(bundle_dir, shapes_new, tmp_path):
    from edgecl_runtime.cli import main

    shapes_new = shapes_new[1]
    b = Bundle.load(bundle_dir)
    name = new_classes(b, shapes_new, 1)[0]
    known = class_images(shapes_new, b.classes[0], 1)
    np.save(tmp_path / "q.npy", np.concatenate([known, class_images(shapes_new, name, 1)]))
    r = CliRunner().invoke(main, ["predict", str(bundle_dir), str(tmp_path / "q.npy"), "--unknown", "auto", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [set(row) for row in rows] == [{"image", "label", "unknown_score", "top_k"}] * 2
    assert rows[0]["label"] == b.classes[0] and rows[0]["unknown_score"] < rows[1]["unknown_score"]
    r = CliRunner().invoke(main, ["predict", str(bundle_dir), str(tmp_path / "q.npy"), "--unknown", "high"])
    assert r.exit_code == 2 and "expected 'auto' or a number" in r.output
    r = CliRunner().invoke(main, ["eval", str(bundle_dir), "--dataset", "shapes:40", "--unknown", "auto", "--json"])
    assert r.exit_code == 0, r.output
    u = json.loads(r.output.splitlines()[-1])["unknown"]
    assert {"score", "auroc", "fpr_at_95_tpr", "known_accepted", "unknown_accepted", "top1_at_threshold",
            "top1_of_accepted", "threshold", "known_images", "unknown_images", "top1"} <= set(u)
    assert u["unknown_images"] == 100 and u["auroc"] > 0.9


def test_a_linear_head_reports_its_max_logit():
    head = head_class("linear")(np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32), np.ones(3, np.int64))
    x = np.array([[5, 0, 0, 0], [0.2, 0.1, 0, 0]], np.float32)
    assert head.UNKNOWN_SCORE == "max_score" and head.cosines(x) is None
    assert set(unknown.candidates(head, x)) == {"max_score", "msp", "energy", "margin"}
    np.testing.assert_allclose(unknown.unknown_scores(head, "max_score", x, head.scores(x)), [-5, -0.2], rtol=1e-6)


@pytest.mark.parametrize("kind", ["prototype_cosine", "gaussian"])
def test_held_out_scores_equal_the_head_without_the_image(kind, tmp_path):
    """Calibrating a score-based unknown score (a Gaussian head's Mahalanobis distance) scores each training image
    by its class re-fitted without it: as the head after ``without_examples`` scores it."""
    head = store.read_state(with_head_kind(copy_fixture(tmp_path / "b"), kind)).head
    x = embeddings(11, 6, head.dim)
    head = head.with_examples(2, x)
    held = head.held_out_scores(x, np.full(6, 2))
    for i in range(6):
        own = head.without_examples(2, x[i : i + 1]).scores(x[i : i + 1])[0, 2]
        # float32 statistics and scores on both sides: agreement to float32 rounding, relative to the distance
        assert held[i, 2] == pytest.approx(own, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(np.delete(held[i], 2), np.delete(head.scores(x[i : i + 1])[0], 2), rtol=1e-6)
