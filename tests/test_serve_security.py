"""`edgecl serve` refuses what another web site could make a browser send (docs/serve-api.md, "Security").

The attacks of issue 35 over real HTTP against a running server: cross-site form posts, a
re-bound Host name, writes without the page's secret; each refused with the bundle unchanged
byte for byte. The page's own requests still work; every response carries the security headers.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("cheroot")
Image = pytest.importorskip("PIL.Image")

from edgecl_runtime import Bundle  # noqa: E402
from edgecl_runtime.serve import make_server  # noqa: E402
from edgecl_runtime.serve.security import Guard, host_name  # noqa: E402


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body as a plain HTML form sends it (no preflight)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def digest(bundle_dir) -> dict[str, str]:
    """sha256 of every file in the bundle directory, the server's own side folders included."""
    return {str(p.relative_to(bundle_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle_dir.rglob("*")) if p.is_file() and ".ort-cache" not in p.parts}


class Client:
    def __init__(self, base: str):
        self.base = base

    def __call__(self, method: str, path: str, body: bytes | None = None, **headers) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={k.replace("_", "-"): v for k, v in headers.items()})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()


@pytest.fixture
def server(bundle_dir):
    srv = make_server(bundle_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield srv
    srv.close()
    thread.join(timeout=5)


def test_the_attacks_of_issue_35_are_refused_and_change_nothing(server, bundle_dir):
    http = Client(server.base_url)
    token = server.guard.token
    before = digest(bundle_dir)
    body, ctype = multipart({"name": "pwned"}, png())
    port = server.effective_port
    attacks = {
        # cross-site form post without the token (what any page can send)
        "form post, other origin": http("POST", "/api/classes", body, Content_Type=ctype, Origin="http://evil.example"),
        # ... and with the browser's token cookie: the cookie alone is not enough for a write
        "form post, token cookie": http("POST", "/api/classes", body, Content_Type=ctype, Origin="http://evil.example",
                                        Cookie=f"edgecl_token={token}"),
        "form post, same-site page": http("POST", "/api/classes", body, Content_Type=ctype, Cookie=f"edgecl_token={token}",
                                          Origin=f"http://127.0.0.1:{port + 1}", Sec_Fetch_Site="same-site"),
        "form post, no origin": http("POST", "/api/classes", body, Content_Type=ctype, Cookie=f"edgecl_token={token}"),
        # DNS rebinding: a page on evil.example re-resolved to 127.0.0.1 is same-origin with its own Host
        "rebound read": http("GET", "/api/classes", Host=f"evil.example:{port}", Authorization=f"Bearer {token}"),
        "rebound delete": http("DELETE", "/api/classes/red-ring", Host=f"evil.example:{port}"),
        "rebound rollback": http("POST", "/api/rollback", b'{"to": 0}', Host=f"evil.example:{port}",
                                 Content_Type="application/json"),
        "rebound zip": http("GET", "/api/bundle.zip", Host=f"evil.example:{port}", Cookie=f"edgecl_token={token}"),
        # no token at all
        "read without token": http("GET", "/api/classes"),
        "zip without token": http("GET", "/api/bundle.zip"),
        "delete without token": http("DELETE", "/api/classes/red-ring", Origin=server.base_url),
        # a cross-site subresource (an <img>/<script> tag) carrying the cookie
        "cross-site read": http("GET", "/api/bundle.zip", Cookie=f"edgecl_token={token}", Sec_Fetch_Site="cross-site",
                                Sec_Fetch_Mode="no-cors", Sec_Fetch_Dest="script"),
        "framed page": http("GET", "/", Cookie=f"edgecl_token={token}", Sec_Fetch_Site="cross-site",
                            Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="iframe"),
    }
    statuses = {k: v[0] for k, v in attacks.items()}
    assert all(s in (401, 403) for s in statuses.values()), statuses
    assert statuses["rebound read"] == 403 and statuses["read without token"] == 401
    for name, (status, headers, data) in attacks.items():
        assert headers["Content-Type"] == "application/json" and json.loads(data)["status"] == status, name
        assert "Set-Cookie" not in headers, name  # no secret handed to a refused client
    assert digest(bundle_dir) == before
    assert "pwned" not in Bundle.load(bundle_dir).classes


def test_the_page_and_a_token_client_still_teach(server, bundle_dir):
    http = Client(server.base_url)
    status, headers, _ = http("GET", f"/?token={server.guard.token}")
    assert status == 200
    cookies = dict(c.split(";")[0].split("=", 1) for c in headers.get_all("Set-Cookie"))
    assert cookies["edgecl_token"] == server.guard.token and cookies["_xsrf"] == server.guard.xsrf
    page = {"Cookie": f"edgecl_token={server.guard.token}; _xsrf={server.guard.xsrf}", "Origin": server.base_url,
            "Sec-Fetch-Site": "same-origin"}
    body, ctype = multipart({"name": "mine"}, png())
    assert http("POST", "/api/classes", body, Content_Type=ctype, **{k.replace("-", "_"): v for k, v in page.items()})[0] == 403
    status, _, data = http("POST", "/api/classes", body, Content_Type=ctype, X_XSRFToken=server.guard.xsrf,
                           **{k.replace("-", "_"): v for k, v in page.items()})
    assert status == 201, data
    body, ctype = multipart({"name": "script"}, png())  # a script or app with the token, no browser headers
    assert http("POST", "/api/classes", body, Content_Type=ctype, Authorization=f"Bearer {server.guard.token}")[0] == 201
    assert Bundle.load(bundle_dir).classes[-2:] == ["mine", "script"]


def test_security_headers_on_every_response(server):
    http = Client(server.base_url)
    auth = {"Authorization": f"Bearer {server.guard.token}"}
    for path, code in [("/", 200), ("/static/app.js", 200), ("/api/info", 200), ("/api/nothing", 404),
                       ("/bundle/manifest.json", 200)]:
        status, headers, _ = http("GET", path, **auth)
        assert status == code, path
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        if path.startswith(("/api/", "/bundle/")):
            assert headers["Cache-Control"] == "no-store", path
    status, headers, _ = http("GET", "/api/info")  # refused responses too
    assert status == 401 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("header, name", [("[::1]:8000", "::1"), ("Example.COM.:80", "example.com"),
                                          ("localhost", "localhost"), ("127.0.0.1:9", "127.0.0.1")])
def test_host_names(header, name):
    assert host_name(header) == name


def test_host_allow_list():
    local = Guard.for_address("127.0.0.1")
    assert local.host_ok("localhost:8000") and local.host_ok("127.0.0.1:8000") and local.host_ok("[::1]:8000")
    assert local.host_ok("127.0.0.2:8000")  # any loopback address: IP literals cannot be re-bound
    assert not local.host_ok("evil.example:8000") and not local.host_ok("192.168.1.5:8000") and not local.host_ok("")
    lan = Guard.for_address("0.0.0.0", token="t", allow_hosts=["device.example"])
    assert lan.host_ok("192.168.1.5:8000") and lan.host_ok("device.example") and not lan.host_ok("evil.example")
    bound = Guard.for_address("192.168.1.5", token="t")
    assert bound.host_ok("192.168.1.5:8000") and not bound.host_ok("evil.example:8000")


def test_without_a_token_writes_still_need_the_page(bundle_dir):
    srv = make_server(bundle_dir, "127.0.0.1", 0, no_token=True)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        http = Client(srv.base_url)
        before = digest(bundle_dir)
        body, ctype = multipart({"name": "pwned"}, png())
        assert http("GET", "/api/classes")[0] == 200  # reads: only this origin's pages can see the answer
        assert http("POST", "/api/classes", body, Content_Type=ctype)[0] == 403
        assert http("POST", "/api/classes", body, Content_Type=ctype, Origin="http://evil.example",
                    X_XSRFToken=srv.guard.xsrf)[0] == 403
        assert http("GET", "/api/classes", Host="evil.example")[0] == 403
        assert digest(bundle_dir) == before
        assert http("POST", "/api/classes", body, Content_Type=ctype, Origin=srv.base_url, X_XSRFToken=srv.guard.xsrf)[0] == 201
    finally:
        srv.close()
        thread.join(timeout=5)


def test_without_fetch_metadata_a_foreign_origin_or_referer_is_refused(server):
    """Plain HTTP under a network name: Chromium sends no Sec-Fetch-*; the Origin / Referer still tell."""
    http = Client(server.base_url)
    cookie = f"edgecl_token={server.guard.token}"
    for path in ("/api/classes", "/api/bundle.zip", "/bundle/manifest.json"):
        assert http("GET", path, Cookie=cookie, Referer="http://127.0.0.1:1/attack.html")[0] == 403, path
        assert http("GET", path, Cookie=cookie, Origin="http://127.0.0.1:1")[0] == 403, path
        assert http("GET", path, Cookie=cookie)[0] == 200, path  # no browser headers: a script with the token
    assert http("GET", "/", Cookie=cookie, Referer="http://elsewhere.example/")[0] == 200  # a link opening the page
