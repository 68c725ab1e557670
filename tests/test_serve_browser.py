"""`edgecl serve` in a real browser: teach three classes from files, predict, remove, roll back, reload.

Runs headless Chromium (see tests/serve_browser.py); skipped only when Chromium is absent.
Both modes: the model on the server, and the model in the browser (onnxruntime-web).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from serve_browser import Page, chromium_driver, class_images, running_server

pytest.importorskip("flask")
pytest.importorskip("cheroot")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.browser
CLASSES = ["green-ring", "blue-star", "purple-cross"]  # shapes classes the exported bundle has not seen
SCREENSHOT_ENV = "EDGECL_SERVE_SCREENSHOT"  # also save the page's screenshot there (docs/serve.png)


@pytest.fixture(scope="module")
def images(shapes_new, tmp_path_factory):
    """Two example PNGs and one held-out PNG per class."""
    return class_images(shapes_new, tmp_path_factory.mktemp("serve-images"), CLASSES)


def _session(page: Page, server, images: dict, tmp_path: Path, mode: str):
    url = server.base_url
    page.open(f"{server.url}&mode={mode}")
    assert "token" not in page.d.current_url  # the page takes the token out of the address bar
    assert page.one("#mode").get_attribute("value") == mode
    start = len(page.class_names())
    for c in CLASSES:
        page.teach(c, images[c][:2])
    for c in CLASSES:
        assert page.predict(images[c][2]) == c
    assert page.count(f'.class-card[data-class="{CLASSES[0]}"] .gallery img') == 2
    seq_before_remove = int(page.attr(".history-row.current", "data-seq"))
    page.remove(CLASSES[1])
    assert page.predict(images[CLASSES[1]][2]) != CLASSES[1]
    page.rollback(seq_before_remove)
    assert CLASSES[1] in page.class_names()
    page.d.refresh()
    page.wait_ready()
    names = page.class_names()
    assert len(names) == start + 3 and names[:3] == CLASSES  # taught classes first, then the export's
    for c in CLASSES:
        assert page.count(f'.class-card[data-class="{c}"] .gallery img') == 2
        assert page.text(f'.class-card[data-class="{c}"] .count') == "2 examples"
    assert page.predict(images[CLASSES[1]][2]) == CLASSES[1]
    assert page.attr(".history-row.current", "data-seq") == str(seq_before_remove)
    urls = page.d.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert urls and all(u.startswith(url + "/") for u in urls), urls  # no CDN: everything from the server
    shot = tmp_path / f"serve-{mode}.png"
    page.d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV) and mode == "server":
        page.d.save_screenshot(os.environ[SCREENSHOT_ENV])


def test_page_in_server_mode(bundle_dir, images, tmp_path):
    from edgecl_runtime import store

    with running_server(bundle_dir) as server, chromium_driver() as driver:
        page = Page(driver)
        _session(page, server, images, tmp_path, "server")
        store.remove_class(bundle_dir, CLASSES[2])  # another process: the open page follows without a reload
        page.wait(lambda: CLASSES[2] not in page.class_names())
        page.one("#camera-btn").click()  # the fake camera: live predictions and captured examples
        page.wait(lambda: int(page.attr("#prediction", "data-live") or 0) >= 1)
        page.wait(lambda: page.attr("#capture-btn", "disabled") is None)
        page.one("#capture-btn").click()
        page.wait(lambda: page.count("#pending .pending-item") == 1)
        page.one("#class-name").send_keys("camera")
        page.one("#teach-btn").click()
        page.wait(lambda: "camera" in page.class_names())
        assert page.count('.class-card[data-class="camera"] .gallery img') == 1


def test_page_in_browser_mode(bundle_dir, images, tmp_path):
    import json

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format_version"] >= 3 and manifest["model"]["file"] == "model.onnx"  # the single-file model
    with running_server(bundle_dir) as server, chromium_driver() as driver:
        page = Page(driver, timeout=60)
        _session(page, server, images, tmp_path, "browser")
        # Top-1 and score equal to Python's on the same files, resized by the JS port of preprocess.py
        from edgecl_runtime import Bundle

        bundle = Bundle.load(bundle_dir)
        rng = np.random.default_rng(0)
        for i, (c, files) in enumerate(images.items()):
            im = Image.open(files[2]).resize((int(rng.integers(20, 90)), int(rng.integers(20, 90))))
            path = tmp_path / f"odd-{i}.png"
            im.save(path)
            ref = bundle.predict(path)
            assert page.predict(path) == ref.labels[0]
            assert abs(float(page.attr(".pred-row", "data-score")) - float(ref.scores[0])) < 1e-4
        calls = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname);")
        assert "/api/predict" not in calls and "/bundle/manifest.json" in calls  # no server round trip
