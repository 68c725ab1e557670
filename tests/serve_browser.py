"""Driving ``edgecl serve``'s page in a real Chromium (Debian's chromium + chromium-driver, selenium).

``chromium_driver()`` gives a headless Chromium with a fake camera, or skips the
test with the reason when Chromium, its driver or selenium is absent.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--window-size=1280,1500",
]


def _merged_flags(extra) -> list[str]:
    """FLAGS with ``extra`` added; an extra flag replaces the base flag of the same name (``--window-size=...``)."""
    extra = list(extra)
    names = {f.split("=", 1)[0] for f in extra}
    return [f for f in FLAGS if f.split("=", 1)[0] not in names] + extra


@contextmanager
def chromium_driver(extra_flags=()):
    """Headless Chromium (FLAGS, a fresh profile); ``extra_flags`` add to or replace FLAGS, e.g.
    ``--host-resolver-rules=MAP evil.test 127.0.0.1`` or ``--ignore-certificate-errors-spki-list=...``."""
    if not Path(CHROMIUM).is_file() or not Path(CHROMEDRIVER).is_file():
        pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver; .ci/setup-system.sh)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgecl-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in _merged_flags(extra_flags) + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def running_server(bundle_path, port: int = 0, **kwargs):
    """``edgecl serve`` on 127.0.0.1 (``port``, default a free one) in a thread: yields the ``Server``
    (``.url`` has its token); ``kwargs`` go to ``make_server`` (``token``, ``no_token``, ``tls``, ...)."""
    from edgecl_runtime.serve import make_server

    server = make_server(bundle_path, "127.0.0.1", port, **kwargs)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(timeout=5)


class Page:
    """The page's DOM, by the ids and data attributes app.js renders."""

    def __init__(self, driver, timeout: float = 30):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.By, self.timeout = driver, By, timeout
        self.wait = lambda cond, t=timeout: WebDriverWait(driver, t).until(lambda d: cond())

    def css(self, selector):
        return self.d.find_elements(self.By.CSS_SELECTOR, selector)

    def one(self, selector):
        return self.d.find_element(self.By.CSS_SELECTOR, selector)

    def attr(self, selector: str, name: str):
        """Attribute of the first match (None if absent), read in one script: no stale element between steps."""
        return self.d.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            selector, name)

    def text(self, selector: str) -> str:
        return self.d.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", selector)

    def count(self, selector: str) -> int:
        return self.d.execute_script("return document.querySelectorAll(arguments[0]).length;", selector)

    def open(self, url):
        self.d.get(url)
        self.wait_ready()

    def wait_ready(self):
        self.wait(lambda: self.attr("#status", "data-state") in ("ready", "error"))
        assert self.attr("#status", "data-state") == "ready", self.text("#status")

    def class_names(self) -> list[str]:
        return self.d.execute_script("return [...document.querySelectorAll('.class-card')].map(c => c.dataset.class);")

    def message(self) -> str:
        return self.text("#message")

    def teach(self, name: str, files: list[Path]):
        before = self.class_names()
        box = self.one("#class-name")
        box.clear()
        box.send_keys(name)
        self.one("#files-teach").send_keys("\n".join(str(f) for f in files))
        self.wait(lambda: self.count("#pending .pending-item") == len(files))
        self.one("#teach-btn").click()
        self.wait(lambda: name in self.class_names() and len(self.class_names()) > len(before) or "failed" in self.message())
        assert name in self.class_names(), self.message()

    def predict(self, file: Path) -> str:
        done = int(self.attr("#prediction", "data-done") or 0)
        self.one("#files-predict").send_keys(str(file))
        self.wait(lambda: int(self.attr("#prediction", "data-done") or 0) > done or "failed" in self.message())
        assert "failed" not in self.message(), self.message()
        return self.attr("#top1", "data-class")

    def remove(self, name: str):
        self.one(f'.class-card[data-class="{name}"] .remove-btn').click()
        self.wait(lambda: name not in self.class_names())

    def rollback(self, seq: int):
        self.one(f'.history-row[data-seq="{seq}"] .rollback-btn').click()
        self.wait(lambda: self.attr(".history-row.current", "data-seq") == str(seq))


def record_requests(server) -> list[dict]:
    """Every request ``server`` answers from now on, in order: what the browser sent and the status it got.

    Each entry: method, path, host, status, the fetch metadata (site, mode, dest), origin, referer, the names of
    the cookies sent, and whether an ``X-XSRFToken`` / ``Authorization`` header came with it.
    """
    from http.cookies import SimpleCookie

    log: list[dict] = []
    app = server._server.wsgi_app  # cheroot calls it per request

    def recorder(environ, start_response):
        entry = {
            "method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
            "host": environ.get("HTTP_HOST"), "status": None,
            "site": environ.get("HTTP_SEC_FETCH_SITE"), "mode": environ.get("HTTP_SEC_FETCH_MODE"),
            "dest": environ.get("HTTP_SEC_FETCH_DEST"), "origin": environ.get("HTTP_ORIGIN"),
            "referer": environ.get("HTTP_REFERER"),
            "cookies": sorted(SimpleCookie(environ.get("HTTP_COOKIE", ""))),
            "xsrf_header": "HTTP_X_XSRFTOKEN" in environ, "authorization": "HTTP_AUTHORIZATION" in environ,
        }

        def start(status, headers, exc_info=None):
            entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        try:
            return app(environ, start)
        finally:
            log.append(entry)

    server._server.wsgi_app = recorder
    return log


def class_images(shapes_new, out: Path, classes) -> dict[str, list[Path]]:
    """Three PNGs per class of the shapes set the exported bundle has not seen (two to teach, one to predict)."""
    import numpy as np
    from PIL import Image

    train, _ = shapes_new
    names = np.array(train.class_names)[train.labels]
    files = {}
    for c in classes:
        files[c] = [out / f"{c}-{i}.png" for i in np.nonzero(names == c)[0][:3]]
        for i, p in zip(np.nonzero(names == c)[0][:3], files[c]):
            Image.fromarray(train.images[i]).save(p)
    return files

