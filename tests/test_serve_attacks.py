"""`edgecl serve` against other web sites, in a real Chromium; over HTTPS; on a phone-sized screen.

The victim has the real page open with its token (so Chromium holds the server's token cookie and
its ``_xsrf`` cookie for 127.0.0.1), then visits an attacker's pages served by a second, tiny HTTP
server on another port. Those pages try what a web page can: auto-submitted forms, ``fetch`` with
the victim's cookies, framing the page, reading the API and the bundle, and DNS rebinding (Chromium's
``--host-resolver-rules`` maps ``evil.test`` to 127.0.0.1). Every attempt must be refused, the page
must read nothing, and the bundle's files must stay byte-for-byte the same. The attacker's pages
run on 127.0.0.1 (same site as the server: Chromium sends the SameSite=Strict cookies and lets the
page read the ``_xsrf`` cookie) and on ``attacker.test`` (another site: no cookies).

Runs headless Chromium (tests/serve_browser.py); skipped only when Chromium is absent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import socket
import ssl
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from serve_browser import FLAGS, Page, chromium_driver, class_images, record_requests, running_server

pytest.importorskip("flask")
pytest.importorskip("cheroot")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.browser
LAN_NAME = "edgecl-box.test"  # the server's name on a LAN (--allow-host); resolves to 127.0.0.1 here
RESOLVE = f"--host-resolver-rules=MAP evil.test 127.0.0.1, MAP attacker.test 127.0.0.1, MAP {LAN_NAME} 127.0.0.1"
VICTIM_CLASS = "green-ring"  # taught by the victim on the real page before the attacks
SHOWN_AFTER = "blue-star"  # taught by the victim after them: the page still works


@pytest.fixture(scope="module")
def images(shapes_new, tmp_path_factory):
    """Three PNGs per class (two to teach, one to predict)."""
    return class_images(shapes_new, tmp_path_factory.mktemp("attack-images"), (VICTIM_CLASS, SHOWN_AFTER))


def _files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under the bundle directory (its state, journal, thumbnails; not the lock)."""
    from edgecl_runtime.storage import LOCK_NAME

    return {str(p.relative_to(bundle_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle_dir.rglob("*")) if p.is_file() and p.name != LOCK_NAME
            and ".ort-cache" not in p.parts}


def _api(server, path: str):
    """GET the JSON API as a client holding the token (Bearer)."""
    req = Request(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {server.guard.token}"})
    with urlopen(req, timeout=30) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- the attacker's web site
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class _Site(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.open_sockets: set[socket.socket] = set()
        self.guard = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self.guard:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.guard:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self):
        """Close every connection a browser still holds open (an idle keep-alive or a preconnect)."""
        with self.guard:
            for s in list(self.open_sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@contextmanager
def attacker_site(root: Path, port: int = 0):
    """Serve the files of ``root`` on 127.0.0.1 (another port than edgecl's); yields the ``_Site``."""
    site = _Site(("127.0.0.1", port), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    stopped = False

    def stop():
        nonlocal stopped
        if not stopped:
            stopped = True
            site.shutdown()
            site.drop_connections()
            site.server_close()
            thread.join(timeout=5)

    site.stop = stop
    try:
        yield site
    finally:
        stop()


# The attack pages' common script: each attempt's outcome goes into #results (JSON) for the test to read.
RECORDER = """
const results = [];
async function attempt(name, make) {
  const r = { name };
  try {
    const resp = await make();
    Object.assign(r, { outcome: "response", type: resp.type, status: resp.status });
    try { r.body = (await resp.text()).slice(0, 400); } catch (e) { r.body_error = `${e.name}: ${e.message}`; }
  } catch (e) {
    Object.assign(r, { outcome: "threw", error: `${e.name}: ${e.message}` });
  }
  results.push(r);
}
function finish(extra = {}) {
  document.getElementById("results").textContent = JSON.stringify({ results, ...extra });
  document.body.dataset.done = "1";
}
const png = Uint8Array.from(atob("%(png)s"), (c) => c.charCodeAt(0));
function pwnedForm() {
  const form = new FormData();
  form.append("name", "pwned");
  form.append("image", new File([png], "pwned.png", { type: "image/png" }));
  return form;
}
function xsrfCookie() {  // the page's _xsrf cookie, readable here when this page shares the server's host
  const hit = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
  return hit ? hit.slice(6) : "";
}
"""


def _page(body: str, script: str, png: str) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>cute cats</title></head><body>{body}"
            f"<pre id=results></pre><script>{RECORDER % {'png': png}}\n{script}</script></body></html>")


def write_attack_pages(root: Path, target: str, png: bytes, rollback_to: int) -> None:
    """The attacker's pages, aimed at the edgecl server at ``target`` (``http://host:port``)."""
    root.mkdir(parents=True, exist_ok=True)
    b64 = base64.b64encode(png).decode()
    # (a) a form that submits itself: multipart with an image file put in by DataTransfer
    (root / "form-multipart.html").write_text(_page(
        f'<form id=f method=post enctype=multipart/form-data action="{target}/api/classes">'
        '<input name=name value=pwned><input id=file type=file name=image></form>', """
const dt = new DataTransfer();
dt.items.add(new File([png], "pwned.png", { type: "image/png" }));
document.getElementById("file").files = dt.files;
document.getElementById("f").submit();""", b64))
    # (a') a text/plain form whose body reads as JSON: {"to": N, "x": "="}
    (root / "form-text.html").write_text(_page(
        f'<form id=f method=post enctype=text/plain action="{target}/api/rollback">'
        f'<input name=\'{{"to": {rollback_to}, "x": "\' value=\'"}}\'></form>',
        'document.getElementById("f").submit();', b64))
    # (b) writes and (d) reads with fetch, with the victim's cookies
    (root / "fetch.html").write_text(_page("<h1>fetch</h1>", f"""
(async () => {{
  const T = "{target}", cookieSeen = document.cookie;
  await attempt("DELETE no-cors", () => fetch(`${{T}}/api/classes/{VICTIM_CLASS}`,
    {{ method: "DELETE", mode: "no-cors", credentials: "include" }}));
  await attempt("DELETE cors", () => fetch(`${{T}}/api/classes/{VICTIM_CLASS}`,
    {{ method: "DELETE", credentials: "include" }}));
  await attempt("POST rollback no-cors", () => fetch(`${{T}}/api/rollback`,
    {{ method: "POST", mode: "no-cors", credentials: "include", body: JSON.stringify({{ to: {rollback_to} }}) }}));
  await attempt("POST rollback cors json+xsrf", () => fetch(`${{T}}/api/rollback`,
    {{ method: "POST", credentials: "include", body: JSON.stringify({{ to: {rollback_to} }}),
      headers: {{ "Content-Type": "application/json", "X-XSRFToken": xsrfCookie() }} }}));
  await attempt("POST classes no-cors multipart", () => fetch(`${{T}}/api/classes`,
    {{ method: "POST", mode: "no-cors", credentials: "include", body: pwnedForm() }}));
  await attempt("POST classes cors multipart+xsrf", () => fetch(`${{T}}/api/classes`,
    {{ method: "POST", credentials: "include", body: pwnedForm(), headers: {{ "X-XSRFToken": xsrfCookie() }} }}));
  await attempt("GET classes cors", () => fetch(`${{T}}/api/classes`, {{ credentials: "include" }}));
  await attempt("GET classes no-cors", () => fetch(`${{T}}/api/classes`,
    {{ mode: "no-cors", credentials: "include" }}));
  await attempt("GET bundle.zip cors", () => fetch(`${{T}}/api/bundle.zip`, {{ credentials: "include" }}));
  await attempt("GET bundle.zip no-cors", () => fetch(`${{T}}/api/bundle.zip`,
    {{ mode: "no-cors", credentials: "include" }}));
  await attempt("GET manifest cors", () => fetch(`${{T}}/bundle/manifest.json`, {{ credentials: "include" }}));
  finish({{ cookie: cookieSeen }});
}})();""", b64))
    # (c) the page, and the API, in frames
    (root / "frame.html").write_text(_page(
        f'<iframe id=page src="{target}/"></iframe><iframe id=api src="{target}/api/classes"></iframe>', """
const frames = [...document.querySelectorAll("iframe")], seen = {};
function look(f) {
  let doc;
  try { doc = f.contentDocument === null ? "null" : `readable: ${f.contentDocument.documentElement.outerHTML}`; }
  catch (e) { doc = `threw ${e.name}`; }
  seen[f.id] = { loaded: true, contentDocument: doc };
  if (frames.every((g) => seen[g.id])) finish({ frames: seen });
}
for (const f of frames) f.addEventListener("load", () => look(f));""", b64))


def _results(page: Page) -> dict:
    page.wait(lambda: page.attr("body", "data-done") == "1")
    return json.loads(page.text("#results"))


def _refusal(body: str, status: int, mentions: str = "") -> bool:
    """``body`` is the server's JSON refusal ``{"error": ..., "status": status}`` (naming ``mentions``)."""
    got = json.loads(body)
    return set(got) == {"error", "status"} and got["status"] == status and mentions in got["error"]


def _navigation(page: Page) -> tuple[int, str]:
    """HTTP status and text of the document the tab shows (the server's answer to a navigation)."""
    return page.d.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n ? n.responseStatus : null, document.body ? document.body.innerText : ''];")


def _loaded(page: Page, path_prefix: str = "/") -> None:
    """Wait until the tab shows a loaded document at a path starting with ``path_prefix`` (a script run while the
    tab navigates may fail: that is "not yet")."""
    from selenium.common.exceptions import WebDriverException

    def done():
        try:
            return page.d.execute_script(
                "return document.readyState === 'complete' && location.pathname.startsWith(arguments[0]);", path_prefix)
        except WebDriverException:
            return False

    page.wait(done)


def _submitted(page: Page, url: str) -> tuple[int, str]:
    """Open an attack page that submits a form to the server: the server's answer shown in the tab."""
    page.d.get(url)
    _loaded(page, "/api/")
    return _navigation(page)


def _assert_refused_fetches(got: dict, cookies_sent: bool) -> dict:
    """Every fetch threw or got an opaque, empty response: the attacker's page read nothing."""
    by_name = {r["name"]: r for r in got["results"]}
    assert len(by_name) == 11, got
    for r in got["results"]:
        assert r["outcome"] == "threw" or (r["type"] == "opaque" and r["status"] == 0 and r.get("body", "") == ""), r
    # no-cors allows only GET/HEAD/POST: Chromium refuses the DELETE before sending it
    assert by_name["DELETE no-cors"]["outcome"] == "threw", by_name["DELETE no-cors"]
    for name in ("DELETE cors", "POST rollback cors json+xsrf", "POST classes cors multipart+xsrf",
                 "GET classes cors", "GET bundle.zip cors", "GET manifest cors"):
        assert by_name[name]["outcome"] == "threw", by_name[name]  # no CORS answer: the page sees nothing
    # the page shares the server's host: it can read the _xsrf cookie (not the HttpOnly token cookie)
    assert ("_xsrf=" in got["cookie"]) == cookies_sent and "edgecl_token" not in got["cookie"], got["cookie"]
    return by_name


@pytest.mark.parametrize("victim_host", ["127.0.0.1", LAN_NAME])
def test_attacks_from_other_sites_are_refused(bundle_dir, images, tmp_path, victim_host):
    """The victim's page at 127.0.0.1 (loopback: Chromium sends fetch metadata), or at a LAN name over plain
    HTTP (``--allow-host``; Chromium sends no ``Sec-Fetch-*`` to such an origin, so the guard's other checks
    and the browser's CORS / CORP / frame-ancestors enforcement must hold on their own)."""
    loopback = victim_host == "127.0.0.1"
    with running_server(bundle_dir, allow_hosts=(LAN_NAME,)) as server, chromium_driver([RESOLVE]) as driver:
        log = record_requests(server)
        page = Page(driver)
        base = f"http://{victim_host}:{server.effective_port}"
        page.open(f"{base}/?token={server.guard.token}")  # the victim opens the page with its token...
        page.teach(VICTIM_CLASS, images[VICTIM_CLASS][:2])  # ...and teaches a class
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert {"edgecl_token", "_xsrf"} <= set(cookies) and cookies["edgecl_token"]["httpOnly"], cookies
        seq = _api(server, "/api/history")["seq"]
        assert seq >= 1
        before, classes_before = _files(bundle_dir), _api(server, "/api/classes")
        png = images[VICTIM_CLASS][2].read_bytes()
        mark = len(log)

        with attacker_site(tmp_path / "attacker") as site:
            write_attack_pages(tmp_path / "attacker", base, png, rollback_to=seq - 1)
            # the attacker on the victim's host name (another port: the same site) and on another site
            for host, same_site in ((victim_host, True), ("attacker.test", False)):
                origin = f"http://{host}:{site.server_address[1]}"
                start = len(log)
                # (a) forms that submit themselves (the tab navigates to the server's answer)
                for form in ("form-multipart", "form-text"):
                    status, text = _submitted(page, f"{origin}/{form}.html")
                    # refused: 403 (cross-site, or a write from another origin), or 401 when no cookie came along
                    assert status in ((403,) if loopback else (401, 403)) and _refusal(text, status), (form, text)
                    print(f"attacker at {origin}: {form} got", status, text.strip())
                # (b) writes and (d) reads with fetch: all refused, nothing read
                page.d.get(f"{origin}/fetch.html")
                by_name = _assert_refused_fetches(_results(page), cookies_sent=same_site)
                print(f"attacker at {origin}: page saw", json.dumps(by_name, indent=1))
                # (c) the page and the API in frames: not shown (frame-ancestors 'none'), nothing of ours there
                page.d.get(f"{origin}/frame.html")
                frames = _results(page)["frames"]
                assert frames == {f: {"loaded": True, "contentDocument": "null"} for f in ("page", "api")}, frames
                for frame_id in ("page", "api"):
                    driver.switch_to.frame(page.one(f"#{frame_id}"))
                    inside = driver.execute_script("return [location.href, !!document.getElementById('status'), "
                                                   "document.documentElement.outerHTML];")
                    driver.switch_to.default_content()
                    assert inside[0] == "chrome-error://chromewebdata/" and not inside[1], inside
                    assert VICTIM_CLASS not in inside[2] and "teach your bundle" not in inside[2], inside  # ours

                # What reached the server, and what it answered
                # (the browser itself may ask for /favicon.ico of a tab that ended on our 403 JSON: not the attacker's)
                seen = [e for e in log[start:] if e["path"] != "/favicon.ico"]
                print(f"attacker at {origin}: server answered", sorted({
                    (e["method"], e["path"], e["mode"], e["dest"], e["origin"], e["referer"], e["status"],
                     "token cookie" if "edgecl_token" in e["cookies"] else "no cookie") for e in seen}, key=str))
                methods = {(e["method"], e["path"]) for e in seen}
                assert {("POST", "/api/classes"), ("POST", "/api/rollback"), ("GET", "/api/classes"),
                        ("GET", "/api/bundle.zip"), ("GET", "/")} <= methods, methods
                assert ("DELETE", f"/api/classes/{VICTIM_CLASS}") not in methods  # never sent: preflight refused
                writes = [e for e in seen if e["method"] not in ("GET", "HEAD")]
                assert writes and all(e["status"] in (401, 403) for e in writes), writes
                # the victim's SameSite=Strict cookies go along from the same site, not from another
                assert bool([e for e in seen if "edgecl_token" in e["cookies"]]) == same_site, seen
                if loopback:  # fetch metadata: every request of the attacker's pages refused before routing
                    assert all(e["status"] == 403 for e in seen), seen
                    assert {e["site"] for e in seen} == {"same-site" if same_site else "cross-site"}, seen
                else:  # no fetch metadata to a non-trustworthy origin: reads may be answered, and are not read
                    assert {e["site"] for e in seen} == {None}, seen

        attacks = log[mark:]
        assert len(attacks) >= 20
        assert _files(bundle_dir) == before  # byte for byte
        assert _api(server, "/api/classes") == classes_before
        assert _api(server, "/api/history")["seq"] == seq

        # The victim comes back (the cookie carries the token): the page still teaches, removes, rolls back.
        page.open(f"{base}/")
        assert VICTIM_CLASS in page.class_names() and "pwned" not in page.class_names()
        page.teach(SHOWN_AFTER, images[SHOWN_AFTER][:2])
        assert page.predict(images[SHOWN_AFTER][2]) == SHOWN_AFTER
        page.remove(VICTIM_CLASS)
        page.rollback(seq + 1)
        assert VICTIM_CLASS in page.class_names() and SHOWN_AFTER in page.class_names()


def write_rebinding_pages(root: Path, target: str, png: bytes) -> None:
    """Pages of evil.test: one on another port aiming at ``target``; one that becomes same-origin with edgecl."""
    b64 = base64.b64encode(png).decode()
    (root / "rebind.html").write_text(_page("<h1>rebind</h1>", f"""
(async () => {{
  const T = "{target}";
  await attempt("GET classes", () => fetch(`${{T}}/api/classes`));
  await attempt("GET bundle.zip", () => fetch(`${{T}}/api/bundle.zip`));
  await attempt("GET classes no-cors", () => fetch(`${{T}}/api/classes`, {{ mode: "no-cors" }}));
  await attempt("POST classes no-cors", () => fetch(`${{T}}/api/classes`,
    {{ method: "POST", mode: "no-cors", body: pwnedForm() }}));
  await attempt("POST rollback no-cors", () => fetch(`${{T}}/api/rollback`,
    {{ method: "POST", mode: "no-cors", body: JSON.stringify({{ to: 0 }}) }}));
  await attempt("DELETE", () => fetch(`${{T}}/api/classes/{VICTIM_CLASS}`, {{ method: "DELETE" }}));
  finish();
}})();""", b64))
    # Served first by the attacker on port X; the test then puts edgecl on port X: this page's own origin
    # (http://evil.test:X) now reaches edgecl, as after a DNS rebinding of evil.test to 127.0.0.1.
    (root / "same-origin.html").write_text(_page("<h1>rebound</h1>", f"""
window.attack = async () => {{
  for (let i = 0; i < 20; i++) {{  // a connection the browser kept to the attacker's server would answer 404
    const r = await fetch("/api/info", {{ cache: "no-store" }}).catch(() => null);
    if (r && r.headers.get("Server") === "edgecl") break;
  }}
  await attempt("GET /api/info", () => fetch("/api/info"));
  await attempt("GET /api/classes", () => fetch("/api/classes"));
  await attempt("GET /api/bundle.zip", () => fetch("/api/bundle.zip"));
  await attempt("GET /bundle/manifest.json", () => fetch("/bundle/manifest.json"));
  await attempt("GET /", () => fetch("/"));
  await attempt("POST /api/classes", () => fetch("/api/classes", {{ method: "POST", body: pwnedForm(),
    headers: {{ "X-XSRFToken": xsrfCookie() }} }}));
  await attempt("DELETE /api/classes/{VICTIM_CLASS}", () => fetch("/api/classes/{VICTIM_CLASS}",
    {{ method: "DELETE", headers: {{ "X-XSRFToken": xsrfCookie() }} }}));
  await attempt("POST /api/rollback", () => fetch("/api/rollback", {{ method: "POST", body: JSON.stringify({{ to: 0 }}),
    headers: {{ "Content-Type": "application/json", "X-XSRFToken": xsrfCookie() }} }}));
  finish({{ cookie: document.cookie }});
}};
document.body.dataset.ready = "1";""", b64))


@pytest.mark.parametrize("auth", ["token", "no_token"])
def test_dns_rebinding_is_refused(bundle_dir, images, tmp_path, auth):
    """evil.test resolves to 127.0.0.1: its pages reach the server under the name evil.test, and get 403.

    ``no_token`` is the server the Host check alone protects (a rebound page can read its own origin's
    cookies, so an _xsrf cookie given to evil.test would be no secret).
    """
    kwargs = {"no_token": True} if auth == "no_token" else {}
    root = tmp_path / "attacker"
    root.mkdir()
    png = images[VICTIM_CLASS][2].read_bytes()
    with chromium_driver([RESOLVE]) as driver:
        page = Page(driver)
        with running_server(bundle_dir, **kwargs) as server:
            log = record_requests(server)
            page.open(server.url)  # the victim has the page open
            page.teach(VICTIM_CLASS, images[VICTIM_CLASS][:2])
            before, classes_before = _files(bundle_dir), _api(server, "/api/classes")
            mark = len(log)
            port = server.effective_port
            # The server's own port under the rebound name: refused, even as a top-level navigation
            for path in ("/", "/api/classes", "/api/bundle.zip"):
                driver.get(f"http://evil.test:{port}{path}")
                _loaded(page, path)
                status, text = _navigation(page)
                assert status == 403 and _refusal(text, 403, f"evil.test:{port}"), (path, status, text)
            # A page of evil.test on another port fetching evil.test:PORT (same site, another origin)
            write_rebinding_pages(root, f"http://evil.test:{port}", png)
            with attacker_site(root) as site:
                driver.get(f"http://evil.test:{site.server_address[1]}/rebind.html")
                got = _results(page)
            for r in got["results"]:
                assert r["outcome"] == "threw" or (r["type"] == "opaque" and r.get("body", "") == ""), r
            seen = log[mark:]
            assert seen and all(e["status"] == 403 and e["host"] == f"evil.test:{port}" for e in seen), seen
            assert {("GET", "/api/classes"), ("GET", "/api/bundle.zip"), ("POST", "/api/classes"),
                    ("POST", "/api/rollback")} <= {(e["method"], e["path"]) for e in seen}, seen
            assert not [e for e in seen if e["cookies"]], seen  # the victim's cookies belong to 127.0.0.1
            print("evil.test on another port: server answered",
                  sorted({(e["method"], e["path"], e["site"], e["status"]) for e in seen}))

        # The real rebinding: evil.test:X first serves the attacker's page, then reaches edgecl on port X
        with attacker_site(root) as site:
            x = site.server_address[1]
            driver.get(f"http://evil.test:{x}/same-origin.html")
            page.wait(lambda: page.attr("body", "data-ready") == "1")
            site.stop()
            with running_server(bundle_dir, port=x, **kwargs) as server:
                log = record_requests(server)
                driver.execute_script("window.attack();")
                got = _results(page)
        by_name = {r["name"]: r for r in got["results"]}
        print("evil.test rebound to edgecl's port: page saw", json.dumps(by_name, indent=1))
        assert len(by_name) == 8, got
        for r in by_name.values():  # same origin now: the page sees the status, and only the refusal
            assert r["outcome"] == "response" and r["type"] == "basic" and r["status"] == 403, r
            assert _refusal(r["body"], 403, f"Host 'evil.test:{x}'"), r
        assert got["cookie"] == ""  # no _xsrf (nor token) cookie was given to evil.test
        assert log and all(e["status"] == 403 and e["host"] == f"evil.test:{x}" for e in log), log
        writes = {("POST", "/api/classes"), ("DELETE", f"/api/classes/{VICTIM_CLASS}"), ("POST", "/api/rollback")}
        assert writes <= {(e["method"], e["path"]) for e in log}, log  # same origin: the writes were sent, and refused
    assert _files(bundle_dir) == before
    with running_server(bundle_dir) as server:
        assert _api(server, "/api/classes") == classes_before


# ---------------------------------------------------------------- HTTPS
def _spki_sha256_b64(cert_pem: bytes) -> str:
    """base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo, DER): what Chromium pins."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _presented_fingerprint(port: int) -> str:
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port), timeout=30))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_tls_fingerprint_is_the_presented_certificate_and_survives_a_restart(bundle_dir):
    pytest.importorskip("cryptography")
    with running_server(bundle_dir, tls="auto") as server:
        cert_pem = Path(server.tls[0]).read_bytes()
        assert server.base_url.startswith("https://")
        assert server.fingerprint == _presented_fingerprint(server.effective_port)
        assert len(server.fingerprint) == 32 * 3 - 1
        first = server.fingerprint
    with running_server(bundle_dir, tls="auto") as server:  # restarted: the same certificate, the same key
        assert Path(server.tls[0]).read_bytes() == cert_pem
        assert server.fingerprint == first == _presented_fingerprint(server.effective_port)


def test_page_over_https_with_token(bundle_dir, images):
    """A LAN name (edgecl-box.test) over HTTPS: a secure context, so the camera API exists; token + TLS work."""
    pytest.importorskip("cryptography")
    assert {"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"} <= set(FLAGS)
    host = LAN_NAME
    with running_server(bundle_dir, tls="auto", allow_hosts=(host,)) as server, \
            running_server(bundle_dir, allow_hosts=(host,)) as plain:
        spki = _spki_sha256_b64(Path(server.tls[0]).read_bytes())
        with chromium_driver([RESOLVE, f"--ignore-certificate-errors-spki-list={spki}"]) as driver:
            page = Page(driver)
            # The same name over plain HTTP: not a secure context, no camera API (why --tls exists)
            driver.get(f"http://{host}:{plain.effective_port}/?token={plain.guard.token}")
            assert driver.execute_script("return [window.isSecureContext, !!navigator.mediaDevices];") == [False, False]

            log = record_requests(server)
            base = f"https://{host}:{server.effective_port}"
            page.open(f"{base}/?token={server.guard.token}")
            assert driver.current_url == f"{base}/"  # the token left the address bar
            assert driver.execute_script(
                "return [window.isSecureContext, typeof navigator.mediaDevices?.getUserMedia];") == [True, "function"]
            secure = {c["name"]: c["secure"] for c in driver.get_cookies()}
            assert secure == {"edgecl_token": True, "_xsrf": True}, secure
            page.teach(VICTIM_CLASS, images[VICTIM_CLASS][:2])
            assert page.predict(images[VICTIM_CLASS][2]) == VICTIM_CLASS
            page.one("#camera-btn").click()  # getUserMedia over https: the fake camera's live predictions
            page.wait(lambda: int(page.attr("#prediction", "data-live") or 0) >= 1)
            urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
            assert urls and all(u.startswith(f"{base}/") for u in urls), urls
            failed = [e for e in log if e["status"] >= 400 and e["path"] != "/favicon.ico"]
            assert log and not failed, failed
            assert all(e["host"] == f"{host}:{server.effective_port}" for e in log)


# ---------------------------------------------------------------- a phone's screen
PHONE_SCREENSHOT_ENV = "EDGECL_SERVE_PHONE_SCREENSHOT"  # also save the phone's screenshot there
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0 Mobile Safari/537.36")
OVERFLOW = """
const W = arguments[0], bad = [];
const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
  + (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
for (const e of document.querySelectorAll('body *')) {
  const r = e.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;  // not rendered
  if (r.right > W + 0.5 || r.left < -0.5) bad.push(`${name(e)} spans ${r.left.toFixed(1)}..${r.right.toFixed(1)}`);
  if (getComputedStyle(e).overflowX === 'visible' && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
    bad.push(`${name(e)}: content ${e.scrollWidth}px wide in ${e.clientWidth}px`);
}
return { innerWidth, scrollWidth: document.documentElement.scrollWidth, bad };
"""


def test_page_fits_a_phone(bundle_dir, images, tmp_path):
    """At 390 CSS px nothing is wider than the screen: the header wraps, long names wrap or are cut.

    Compared with 390, not ``innerWidth``: on a mobile viewport a too-wide element widens the layout viewport.
    """
    import shutil

    long_bundle = tmp_path / "kitchen-objects-bundle-v2-final"  # the page shows the bundle's name
    shutil.copytree(bundle_dir, long_bundle)
    long_class = "averyveryverylongclassnamewithoutanyspaces-1234567890"
    with running_server(long_bundle) as server, chromium_driver() as driver:
        driver.execute_cdp_cmd("Emulation.setUserAgentOverride", {"userAgent": PHONE_UA})
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
        page = Page(driver)
        page.open(server.url)

        def fits(when: str):
            got = driver.execute_script(OVERFLOW, PHONE["width"])
            assert got["innerWidth"] == PHONE["width"] and got["scrollWidth"] <= PHONE["width"], (when, got)
            assert not got["bad"], (when, got["bad"])

        fits("loaded")
        page.teach(long_class, images[VICTIM_CLASS][:2])
        assert page.predict(images[VICTIM_CLASS][2]) == long_class
        fits("a long class taught and predicted")
        driver.execute_script("window.scrollTo(0, 0);")
        shot = Path(os.environ.get(PHONE_SCREENSHOT_ENV) or tmp_path / "phone.png")
        driver.save_screenshot(str(shot))  # look at it: EDGECL_SERVE_PHONE_SCREENSHOT=/tmp/phone.png pytest -k phone
        assert shot.stat().st_size > 10_000
