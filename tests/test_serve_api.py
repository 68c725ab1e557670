"""`edgecl serve`'s JSON API (docs/serve-api.md), in process: behaviour, and refusals that leave the bundle unchanged."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import zipfile
import zlib

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("cheroot")
Image = pytest.importorskip("PIL.Image")

from edgecl_runtime import Bundle, store  # noqa: E402
from edgecl_runtime.serve import ServedBundle, create_app, make_server  # noqa: E402


def png(seed: int, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` pixels, with one tiny IDAT (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def files(*blobs, name="image"):
    return {name: [(io.BytesIO(b), f"f{i}.png") for i, b in enumerate(blobs)]}


@pytest.fixture
def served(bundle_dir):
    return ServedBundle(bundle_dir)


def page_client(app):
    """A test client that behaves like the page: it opens ``/`` first and echoes the ``_xsrf`` cookie on writes."""
    client = app.test_client()
    assert client.get("/").status_code == 200
    client.environ_base["HTTP_X_XSRFTOKEN"] = client.get_cookie("_xsrf").value
    return client


@pytest.fixture
def client(served):
    return page_client(create_app(served))


@pytest.fixture
def unchanged(bundle_dir):
    """Asserts, after the test, that no file of the bundle changed."""
    before = store.snapshot_files(bundle_dir)
    yield
    assert store.snapshot_files(bundle_dir) == before


def test_info_and_predict_match_the_runtime(client, bundle_dir):
    info = client.get("/api/info").get_json()
    assert info["num_classes"] == 30 and info["seq"] == 0 and info["head"] == "prototype_cosine"
    r = client.post("/api/predict?top_k=3", data=files(png(0), png(1)))
    assert r.status_code == 200
    preds = r.get_json()["predictions"]
    ref = Bundle.load(bundle_dir).predict([np.asarray(Image.open(io.BytesIO(png(i)))) for i in (0, 1)], top_k=3)
    for p, top in zip(preds, ref.top_k):
        assert [t["class"] for t in p["top_k"]] == [c for c, _ in top]
        assert np.allclose([t["score"] for t in p["top_k"]], [s for _, s in top], atol=1e-5)


def test_teach_extend_remove_history_rollback(client, bundle_dir):
    r = client.post("/api/classes", data={"name": "noise", **files(png(1), png(2))})
    assert r.status_code == 201 and r.get_json()["created"] and r.get_json()["examples"] == 2
    r = client.post("/api/classes/noise/examples", data=files(png(3)))
    assert r.status_code == 200 and r.get_json() == {**r.get_json(), "created": False, "examples": 3, "seq": 2}
    card = client.get("/api/classes").get_json()["classes"][-1]
    assert card["name"] == "noise" and card["examples"] == 3 and len(card["thumbnails"]) == 3
    thumb = client.get(f"/api/thumbs/{card['thumbnails'][0]}")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.data)).size == (96, 96)
    assert client.post("/api/predict", data=files(png(2))).get_json()["predictions"][0]["label"] == "noise"
    assert client.delete("/api/classes/noise").get_json()["num_classes"] == 30
    assert "noise" not in Bundle.load(bundle_dir).classes
    h = client.get("/api/history").get_json()
    assert [u["op"] for u in h["updates"]] == ["add", "add", "remove_class"] and h["seq"] == 3
    assert client.post("/api/rollback", json={"to": 2}).get_json() == {"seq": 2, "num_classes": 31}
    card = client.get("/api/classes").get_json()["classes"][-1]
    assert card["name"] == "noise" and len(card["thumbnails"]) == 3  # the gallery follows the rollback
    assert Bundle.load(bundle_dir).classes[-1] == "noise"


def test_teach_from_feature_rows_journals_them(client, bundle_dir):
    rows = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    thumb = "data:image/png;base64," + __import__("base64").b64encode(png(5)).decode()
    r = client.post("/api/classes", json={"name": "from-browser", "features": rows.tolist(), "thumbnails": [thumb]})
    assert r.status_code == 201, r.get_json()
    b = Bundle.load(bundle_dir)
    assert b.classes[-1] == "from-browser" and np.allclose(b.head.prototypes[-1], rows.mean(0), atol=1e-6)
    assert len(client.get("/api/classes").get_json()["classes"][-1]["thumbnails"]) == 1
    r = client.post("/api/classes/from-browser/examples", json={"features": rows[:1].tolist()})
    assert r.get_json()["examples"] == 4


@pytest.mark.parametrize("body, status, words", [
    (b"this is not an image", 415, "not an image"),
    (png(0)[:60], 400, "truncated"),
    (png_header_only(50_000, 50_000), 413, "too large"),  # Pillow's own bomb limit
    (png_header_only(5_000, 5_000), 413, "limit is"),  # over the server's limit, under Pillow's
    (b"", 400, "empty"),
])
def test_bad_uploads_are_refused(client, unchanged, body, status, words):
    for url, extra in (("/api/predict", {}), ("/api/classes", {"name": "bad"})):
        r = client.post(url, data={**extra, **files(body)})
        assert r.status_code == status, r.get_json()
        assert words in r.get_json()["error"]


def test_too_many_pixels_in_one_request_are_refused_before_decoding(client, unchanged):
    r = client.post("/api/predict", data=files(*[png_header_only(4000, 4000)] * 5))  # 5 x 16 Mpixel headers
    assert r.status_code == 413 and "pixels in one request" in r.get_json()["error"]


def test_oversized_body_is_refused(served, unchanged):
    client = page_client(create_app(served, max_body=10_000))
    r = client.post("/api/classes", data={"name": "big", **files(png(0, (200, 200)))})
    assert r.status_code == 413 and "too large" in r.get_json()["error"]


@pytest.mark.parametrize("name, status, words", [
    ("", 400, "non-empty"),
    ("x" * 201, 400, "limit is 200"),
    ("a/b", 400, "path"),
    (" padded", 400, "whitespace"),
    ("red-ring", 409, "exists already"),  # duplicate on create: one of the exported classes
])
def test_bad_class_names_are_refused(client, unchanged, name, status, words):
    r = client.post("/api/classes", data={"name": name, **files(png(0))})
    assert r.status_code == status and words in r.get_json()["error"]


def test_unknown_classes_missing_fields_and_bad_rollbacks(client, unchanged):
    cases = [
        client.delete("/api/classes/no-such-class"),
        client.post("/api/classes/no-such-class/examples", data=files(png(0))),
        client.post("/api/classes", data=files(png(0))),  # no name
        client.post("/api/classes", data={"name": "x"}),  # no image
        client.post("/api/classes", json={"name": "x", "features": [[1.0, 2.0]]}),  # wrong width
        client.post("/api/classes", json={"name": "x", "features": []}),
        client.post("/api/rollback", json={"to": -1}),  # past the start
        client.post("/api/rollback", json={"to": 5}),  # past the end
        client.post("/api/rollback", json={"to": "0"}),
        client.post("/api/rollback", data="nonsense"),
        client.post("/api/predict?top_k=0", data=files(png(0))),
        client.get("/bundle/../manifest.json"),
        client.get("/bundle/secret.txt"),
        client.get("/api/thumbs/..%2Fmanifest.json"),
    ]
    assert [r.status_code for r in cases] == [404, 404, 400, 400, 400, 400, 400, 400, 400, 400, 400, 404, 404, 404]
    assert all(r.is_json and r.get_json()["error"] for r in cases)


def test_token_is_required_when_given(served, unchanged):
    client = create_app(served, token="s3cret").test_client()
    assert client.get("/api/info").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/static/app.js").status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie the page's own requests carry
    assert client.get("/static/app.js").status_code == 200


def test_a_token_by_default_and_none_only_on_loopback(bundle_dir):
    server, chosen = make_server(bundle_dir, "127.0.0.1", 0), make_server(bundle_dir, "127.0.0.1", 0, token="mine")
    try:
        assert len(server.guard.token) >= 32 and server.url.endswith(f"/?token={server.guard.token}")
        assert chosen.guard.token == "mine"
    finally:
        server.close()
        chosen.close()
    with pytest.raises(ValueError, match="needs a token"):
        make_server(bundle_dir, "0.0.0.0", 0, no_token=True)
    from click.testing import CliRunner

    from edgecl_runtime.cli import main

    r = CliRunner().invoke(main, ["serve", str(bundle_dir), "--host", "0.0.0.0", "--port", "0", "--no-token"])
    assert r.exit_code != 0 and "needs a token" in r.output


def test_tabs_servers_and_processes_stay_consistent(bundle_dir):
    """Many threads (tabs) on two servers of one bundle, and another process, all see every update."""
    a, b = create_app(ServedBundle(bundle_dir)), create_app(ServedBundle(bundle_dir))
    rows = np.random.default_rng(1).standard_normal((8, 2, 512)).astype(np.float32)
    codes = []

    def teach(i):
        app = a if i % 2 else b
        codes.append(page_client(app).post("/api/classes", json={"name": f"c{i}", "features": rows[i].tolist()}).status_code)

    threads = [threading.Thread(target=teach, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * 8
    code = ("import numpy as np, sys; from edgecl_runtime import store; "
            "store.add_examples(sys.argv[1], 'other-process', np.ones((1, 512), np.float32))")
    subprocess.run([sys.executable, "-c", code, str(bundle_dir)], check=True)
    for app in (a, b):
        names = [c["name"] for c in page_client(app).get("/api/classes").get_json()["classes"]]
        assert sorted(names[30:]) == sorted([f"c{i}" for i in range(8)] + ["other-process"])
    dup = page_client(b).post("/api/classes", json={"name": "c1", "features": rows[0].tolist()})
    assert dup.status_code == 409  # c1 came through server a
    assert page_client(a).get("/api/history").get_json()["seq"] == 9
    assert Bundle.load(bundle_dir).classes == [c["name"] for c in page_client(a).get("/api/classes").get_json()["classes"]]


def test_download_zip_is_a_loadable_bundle(client, tmp_path):
    client.post("/api/classes", data={"name": "noise", **files(png(1))})
    r = client.get("/api/bundle.zip")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.data)) as z:
        assert not any(".serve-thumbs" in n or ".lock" in n for n in z.namelist())
        z.extractall(tmp_path / "out")
    (bundle,) = (tmp_path / "out").iterdir()
    assert Bundle.load(bundle).classes[-1] == "noise"
    assert "| noise |" in (bundle / "README.md").read_text()  # the model card, with the class taught here


def test_unicode_class_names_round_trip_through_urls(client):
    from urllib.parse import quote

    name = "café ☕ 2"
    assert client.post("/api/classes", data={"name": name, **files(png(0))}).status_code == 201
    assert client.post(f"/api/classes/{quote(name)}/examples", data=files(png(1))).get_json()["examples"] == 2
    assert client.delete(f"/api/classes/{quote(name)}").get_json()["removed"] == name


def test_edgecl_serve_command(bundle_dir):
    """The real command: binds, prints its URL with a fresh token, serves the page and API only with that token."""
    import json
    import os
    import urllib.error
    import urllib.request
    from pathlib import Path

    exe = Path(sys.executable).with_name("edgecl")
    env = {k: v for k, v in os.environ.items() if k != "EDGECL_SERVE_TOKEN"}
    proc = subprocess.Popen([str(exe), "serve", str(bundle_dir), "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ") and "?token=" in line
        url = line.split()[3]
        base, token = url.split("/?token=")
        assert len(token) >= 32
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/info", timeout=30)
        assert err.value.code == 401 and "token" in json.loads(err.value.read())["error"]
        req = urllib.request.Request(f"{base}/api/info", headers={"Authorization": f"Bearer {token}"})
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["num_classes"] == 30
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<title>edgecl" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_edgecl_serve_command_with_a_chosen_token_does_not_print_it(bundle_dir):
    import os
    from pathlib import Path

    exe = Path(sys.executable).with_name("edgecl")
    env = {**os.environ, "EDGECL_SERVE_TOKEN": "t0ken"}
    proc = subprocess.Popen([str(exe), "serve", str(bundle_dir), "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ") and "?token=…" in line and "t0ken" not in line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
