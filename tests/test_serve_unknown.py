"""`edgecl serve` and unknown images (issue 30): the predict API's unknown score and rejection (``?unknown=``), and
the page's "Unknown — teach it?" in a real browser, in both modes: a never-taught image is shown as unknown, its
button puts it into the Teach panel, and once named and taught the next image of its class is recognised."""

from __future__ import annotations

import io

import numpy as np
import pytest

from serve_browser import Page, chromium_driver, class_images, running_server

pytest.importorskip("flask")
pytest.importorskip("cheroot")
Image = pytest.importorskip("PIL.Image")

from edgecl_runtime import Bundle  # noqa: E402
from edgecl_runtime.serve import ServedBundle, create_app  # noqa: E402
from tests.fixtures import copy_fixture  # noqa: E402

NEW = "lime-circle"  # a shapes class the exported bundle was never taught; one example is enough to learn it


@pytest.fixture(scope="module")
def images(shapes_new, tmp_path_factory):
    """Three PNGs of ``NEW`` (never taught) and of a class the bundle knows."""
    out = tmp_path_factory.mktemp("serve-unknown")
    return class_images(shapes_new, out, [NEW, "red-circle"])


def client_of(bundle_dir):
    app = create_app(ServedBundle(bundle_dir), token="t")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer t"
    return client


def post(client, paths, query=""):
    data = {"image": [(io.BytesIO(p.read_bytes()), p.name) for p in paths]}
    return client.post(f"/api/predict{query}", data=data)


# ----------------------------------------------------------------------------------------------- the API
def test_predict_reports_unknown_scores_and_rejects_above_the_calibrated_threshold(bundle_dir, images):
    b = Bundle.load(bundle_dir)
    assert "red-circle" in b.classes and NEW not in b.classes
    paths = [images["red-circle"][0], images[NEW][0]]
    ref = b.predict([np.asarray(Image.open(p)) for p in paths], top_k=3, unknown="auto")
    assert list(ref.unknown) == [False, True]
    client = client_of(bundle_dir)
    r = post(client, paths, "?top_k=3")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["unknown_threshold"] == b.manifest["unknown"]["threshold"]
    known, never = body["predictions"]
    assert (known["label"], known["unknown"]) == ("red-circle", False)
    assert (never["label"], never["unknown"]) == (None, True) and never["top_k"][0]["class"] == ref.top_k[1][0][0]
    np.testing.assert_allclose([known["unknown_score"], never["unknown_score"]], ref.unknown_scores, atol=1e-6)
    # off: nothing rejected, the same scores; a number is the threshold
    off = post(client, paths, "?unknown=off").get_json()
    assert off["unknown_threshold"] is None
    assert [p["label"] for p in off["predictions"]] == ["red-circle", ref.top_k[1][0][0]]
    strict = post(client, paths, "?unknown=-1").get_json()
    assert [p["unknown"] for p in strict["predictions"]] == [True, True] and strict["unknown_threshold"] == -1
    for bad in ("high", "nan", "inf", "1e999", "", "1_0"):
        r = post(client, paths, f"?unknown={bad}")
        assert r.status_code == 400 and "unknown" in r.get_json()["error"], bad


def test_a_bundle_without_a_calibrated_threshold_rejects_nothing(tmp_path):
    bundle = copy_fixture(tmp_path / "b", "bundle-v2")
    png = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(png)
    client = client_of(bundle)
    body = post(client, [png]).get_json()
    assert body["unknown_threshold"] is None and body["predictions"][0]["unknown"] is False
    assert body["predictions"][0]["unknown_score"] == pytest.approx(
        float(Bundle.load(bundle).predict(np.asarray(Image.open(png))).unknown_scores[0]), abs=1e-6)
    r = post(client, [png], "?unknown=auto")
    assert r.status_code == 400 and "no calibrated unknown threshold" in r.get_json()["error"]


# ------------------------------------------------------------------------------------------------ the page
@pytest.mark.browser
@pytest.mark.parametrize("mode", ["server", "browser"])
def test_unknown_teach_it_then_recognised(bundle_dir, images, mode):
    first, second = images[NEW][:2]
    ref = Bundle.load(bundle_dir).predict(first, unknown="auto")
    assert ref.labels[0] is None
    with running_server(bundle_dir) as server, chromium_driver() as driver:
        page = Page(driver, timeout=60)
        page.open(f"{server.url}&mode={mode}")
        assert page.one("#mode").get_attribute("value") == mode
        page.predict(first)
        assert page.attr("#top1", "data-unknown") == "true" and page.attr("#unknown", "hidden") is None
        assert "Unknown — teach it?" in page.text("#unknown")
        assert abs(float(page.attr("#unknown-score", "data-score")) - float(ref.unknown_scores[0])) < 1e-4
        page.one("#teach-unknown").click()  # the image goes to the Teach panel; its name field gets the focus
        page.wait(lambda: page.count("#pending .pending-item") == 1)
        assert page.attr("#pending img", "src") == page.attr("#preview", "src")
        assert driver.execute_script("return document.activeElement.id") == "class-name"
        page.one("#class-name").send_keys(NEW)
        page.one("#teach-btn").click()
        page.wait(lambda: NEW in page.class_names() or "failed" in page.message())
        assert NEW in page.class_names(), page.message()
        assert page.predict(second) == NEW
        assert page.attr("#top1", "data-unknown") == "false" and page.attr("#unknown", "hidden") is not None
        assert page.predict(images["red-circle"][0]) == "red-circle" and page.attr("#top1", "data-unknown") == "false"
    b = Bundle.load(bundle_dir)
    assert b.classes[-1] == NEW and int(b.head.counts[-1]) == 1
    assert b.predict(second, unknown="auto").labels[0] == NEW
