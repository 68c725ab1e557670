"""The JS client (runtime/js) verifies Ed25519-signed bundles as the Python runtime does: bundles signed, updated
and tampered with by Python (edgecl_runtime.signing) are accepted or refused (SignatureError) by both alike,
through the CLI's --public-key in Node, and with WebCrypto in Chromium."""

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import struct
import subprocess
import threading

import pytest

from edgecl_runtime import Bundle, SignatureError, signing, store
from edgecl_runtime.manifest import manifest_checksum
from tests.conftest import ROOT
from tests.fixtures import copy_fixture, embeddings, images

pytest.importorskip("cryptography")
NODE = shutil.which("node")
JS = ROOT / "runtime" / "js"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the runtime/js client cannot run (CI installs node)")


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch):
    """Keys only where a test gives them (Python and the JS CLI both read EDGECL_PUBLIC_KEY / EDGECL_SIGNING_KEY)."""
    monkeypatch.delenv(signing.ENV_PUBLIC, raising=False)
    monkeypatch.delenv(signing.ENV_SIGNING, raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs from `edgecl keygen`'s code: the publisher's (trusted) and another one (foreign)."""
    d = tmp_path_factory.mktemp("keys")
    pairs = {name: signing.generate_key(d / name) for name in ("trusted", "foreign")}
    return {name: (private, public) for name, (private, public) in pairs.items()}


@pytest.fixture
def signed(tmp_path, keys):
    """The committed format-2 bundle, signed by the trusted key (`edgecl sign`)."""
    path = copy_fixture(tmp_path / "b")
    store.sign_bundle(path, keys["trusted"][0])
    return path


def python_decision(bundle, public_keys) -> str:
    """'ok' or the SignatureError's message of Bundle.load(public_key=...)."""
    try:
        Bundle.load(bundle, public_key=[str(k) for k in public_keys], cache=False)
    except SignatureError as exc:
        return str(exc)
    return "ok"


def node_cli(*args, env=None):
    env = {k: v for k, v in os.environ.items() if k not in (signing.ENV_PUBLIC, signing.ENV_SIGNING)} | (env or {})
    return subprocess.run([NODE, str(JS / "cli.mjs"), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def js_decision(bundle, public_keys) -> str:
    """'ok' or the SignatureError's message of the JS CLI's `info BUNDLE --public-key K ...`."""
    proc = node_cli("info", bundle, *[a for k in public_keys for a in ("--public-key", k)])
    if proc.returncode == 0:
        return "ok"
    assert proc.returncode == 1 and proc.stderr.startswith("error: SignatureError: "), proc.stderr
    return proc.stderr.removeprefix("error: SignatureError: ").strip()


def decisions(bundle, public_keys) -> tuple[str, str]:
    """(Python's, Node's) decision on the bundle with these trusted keys."""
    return python_decision(bundle, public_keys), js_decision(bundle, public_keys)


def both_refuse(bundle, public_keys, reason: str):
    py, js = decisions(bundle, public_keys)
    assert py != "ok" and js != "ok", (py, js)
    assert reason in py and reason in js, (py, js)


def node_eval(script: str, *args) -> str:
    """stdout of an ES module run by Node in runtime/js (arguments in process.argv.slice(1))."""
    proc = subprocess.run([NODE, "--input-type=module", "-e", script, "--", *map(str, args)], cwd=JS,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def raw_b64(public_path) -> str:
    """The public key as base64 of its 32 raw bytes (what `edgecl serve`'s /api/info lists)."""
    from cryptography.hazmat.primitives import serialization

    pub = signing.load_public_key(public_path)
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


# ------------------------------------------------------------------ manifests
def test_signed_bundle_is_accepted_with_its_key(signed, keys):
    trusted, foreign = keys["trusted"][1], keys["foreign"][1]
    assert decisions(signed, [trusted]) == ("ok", "ok")
    assert decisions(signed, [foreign, trusted]) == ("ok", "ok")  # --public-key is repeatable
    info = json.loads(node_cli("info", signed, "--public-key", trusted).stdout)
    assert info["signed_by"] == signing.key_id(signing.load_public_key(trusted))
    assert info["classes"] == Bundle.load(signed, public_key=str(trusted), cache=False).classes


def test_foreign_key_refuses_the_bundle(signed, keys):
    both_refuse(signed, [keys["foreign"][1]], "which this")  # "... which this device/client does not trust"


def test_unsigned_bundle_is_refused_only_when_keys_are_given(tmp_path, keys):
    path = copy_fixture(tmp_path / "b")
    both_refuse(path, [keys["trusted"][1]], "is not signed")
    assert decisions(path, []) == ("ok", "ok")


def test_environment_keys_apply_to_the_js_cli(signed, keys):
    env = {signing.ENV_PUBLIC: os.pathsep.join(str(keys[k][1]) for k in ("foreign", "trusted"))}
    assert node_cli("info", signed, env=env).returncode == 0
    proc = node_cli("info", signed, env={signing.ENV_PUBLIC: str(keys["foreign"][1])})
    assert proc.returncode == 1 and "does not trust" in proc.stderr


def write_manifest(path, m):
    """``m`` with its checksum recomputed (and whatever ``signature`` it has kept as is)."""
    (path / "manifest.json").write_text(json.dumps({**m, "checksum": manifest_checksum(m)}, indent=2))


def test_manifest_edited_after_signing_is_refused(signed, keys):
    """A class renamed with the checksum recomputed (the seal is unkeyed): only the signature catches it."""
    m = json.loads((signed / "manifest.json").read_text())
    m["classes"][0] = "omega"
    write_manifest(signed, m)
    assert decisions(signed, [])[1] == "ok"  # intact as far as checksums go
    both_refuse(signed, [keys["trusted"][1]], "the signature does not match")


def test_signed_canonical_json_matches_python(signed, keys):
    """Python's signature over awkward JSON (floats Python prints its own way, escapes, a big integer) verifies in JS."""
    m = json.loads((signed / "manifest.json").read_text())
    m["source"] = {"floats": [1.0, 1e-05, 1.5e16, 0.1, -0.0, 123456789.125, 5e-324, 1e300], "big": 12345678901234567890,
                   "text": 'Caf\u00e9 \u2615 \U0001f469\u200d\U0001f52c \x7f "q" \\ \t', "\u00e9": {"b": [], "a": {}}}
    write_manifest(signed, signing.sign_manifest(m, signing.load_private_key(keys["trusted"][0])))
    assert decisions(signed, [keys["trusted"][1]]) == ("ok", "ok")


def test_key_forms_and_ids_match_python(signed, keys):
    """keyId of the PEM file and of the raw key (base64) is Python's key_id; loadBundle takes either."""
    pem = keys["trusted"][1]
    script = """
        import { readFileSync } from "node:fs";
        import { keyId } from "./lib/signing.mjs";
        import { openBundle } from "./lib/node.mjs";
        const [bundle, pemFile, b64] = process.argv.slice(1);
        const pem = readFileSync(pemFile, "utf8");
        const loaded = await openBundle(bundle, { publicKeys: [b64] });
        console.log(JSON.stringify([await keyId(pem), await keyId(b64), await keyId(Buffer.from(b64, "base64")), loaded.signedBy]));
    """
    want = signing.key_id(signing.load_public_key(pem))
    assert json.loads(node_eval(script, signed, pem, raw_b64(pem))) == [want] * 4


def test_cli_refuses_a_key_file_that_is_not_a_public_key(signed, keys):
    for path in (keys["trusted"][0], signed / "nope.pub"):  # the private key; a missing file
        proc = node_cli("info", signed, "--public-key", path)
        assert proc.returncode == 1 and proc.stderr.startswith("error: InvalidInputError: "), proc.stderr
        assert str(path) in proc.stderr


# -------------------------------------------------------------------- records
def add_updates(path, signing_key=None, public_key=None):
    """Updates as a device makes them: a new class, an extension, a batch of two, a removal (signed with a key)."""
    policy = signing.make_policy(None if public_key is None else str(public_key), signing_key and str(signing_key))
    with signing.using(policy):
        b = Bundle.load(path, cache=False)
        b.add_class("Caf\u00e9 \u2615", images(1))
        b.add_class(b.classes[0], images(2))
        store.add_batch(path, [("delta", embeddings(3)), ("epsilon", embeddings(4, 2))])
        Bundle.load(path, cache=False).remove_class("delta")


def test_updates_signed_by_the_trusted_key_are_accepted(signed, keys):
    add_updates(signed, *keys["trusted"])
    m = json.loads((signed / "manifest.json").read_text())
    py = Bundle.load(signed, public_key=str(keys["trusted"][1]), cache=False)
    assert py.seq > m["journal"]["seq"]  # records after the snapshot point: their own signatures are checked
    assert m["signature"]["key_id"] == signing.key_id(signing.load_public_key(keys["trusted"][1]))
    assert decisions(signed, [keys["trusted"][1]]) == ("ok", "ok")
    info = json.loads(node_cli("info", signed, "--public-key", keys["trusted"][1]).stdout)
    assert (info["classes"], info["counts"], info["seq"]) == (py.classes, py.head.counts.tolist(), py.seq)


def untrusted_update(path, keys, signing_key=None):
    """After the trusted device's signed updates, one appended by a writer holding ``signing_key`` (or no key)."""
    add_updates(path, *keys["trusted"])
    with signing.using(signing.make_policy(None, signing_key and str(signing_key))):
        b = Bundle.load(path, cache=False)
        b.add_class("mallory", images(5))
    m = json.loads((path / "manifest.json").read_text())
    assert m["signature"]["key_id"] == signing.key_id(signing.load_public_key(keys["trusted"][1]))  # only the record is not
    assert b.seq > m["journal"]["seq"]  # it is a record after the snapshot point
    return b.seq


def test_unsigned_update_is_refused(signed, keys):
    seq = untrusted_update(signed, keys)
    both_refuse(signed, [keys["trusted"][1]], f"update {seq} (add ")
    both_refuse(signed, [keys["trusted"][1]], "is not signed")
    assert decisions(signed, []) == ("ok", "ok")


def test_update_signed_by_a_foreign_key_is_refused(signed, keys):
    seq = untrusted_update(signed, keys, keys["foreign"][0])
    both_refuse(signed, [keys["trusted"][1]], f"update {seq} (add ")
    both_refuse(signed, [keys["trusted"][1]], "which this")
    assert decisions(signed, [keys["foreign"][1]])[1] != "ok"  # the foreign key does not vouch for the manifest


def journal_records(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, digest, payload) of each record: b"ECJ1" | u32 LE payload length | 32-byte digest | payload."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos + 4)
        out.append((pos, data[pos + 8 : pos + 40], data[pos + 40 : pos + 40 + n]))
        pos += 40 + n
    return out


def rewrite_last_record(path, edit):
    """Replace the journal's last record by edit(header dict, body) -> (header, body), re-chained (digests are
    unkeyed: anyone can recompute them) and keeping its `sig`."""
    m = json.loads((path / "manifest.json").read_text())
    jpath = path / m["journal"]["file"]
    data = jpath.read_bytes()
    recs = journal_records(data)
    assert len(recs) >= 2 and recs[-1][0] >= m["journal"]["bytes"]  # the last record is after the commit point
    pos, _, payload = recs[-1]
    header, body = payload.split(b"\n", 1)
    h, body = edit(json.loads(header), body)
    new = json.dumps(h, ensure_ascii=True, sort_keys=True).encode("ascii") + b"\n" + body
    digest = hashlib.sha256(recs[-2][1] + new).digest()
    jpath.write_bytes(data[:pos] + b"ECJ1" + struct.pack("<I", len(new)) + digest + new)


def flip_first_float(h, body):
    return h, struct.pack("<f", struct.unpack_from("<f", body)[0] + 1.0) + body[4:]


@pytest.mark.parametrize("edit", [lambda h, body: ({**h, "class": "mallory"}, body), flip_first_float], ids=["header", "embeddings"])
def test_tampered_signed_record_is_refused(signed, keys, edit):
    with signing.using(signing.make_policy(str(keys["trusted"][1]), str(keys["trusted"][0]))):
        b = Bundle.load(signed, cache=False)
        b.add_class("zeta", images(6))
        b.add_class("eta", images(7))
    assert decisions(signed, [keys["trusted"][1]]) == ("ok", "ok")
    rewrite_last_record(signed, edit)
    assert decisions(signed, [])[1] == "ok"  # a consistent journal, as far as digests go
    both_refuse(signed, [keys["trusted"][1]], "the signature does not match")


# -------------------------------------------------------------------- browser
STATIC = ROOT / "runtime" / "edgecl_runtime" / "serve" / "static"
ORT_WEB = ROOT / "runtime" / "web" / "node_modules" / "onnxruntime-web" / "dist"
MIME = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}


@contextlib.contextmanager
def static_site(root):
    """An HTTP server on 127.0.0.1 (a secure context: WebCrypto is there) serving ``root``; yields its URL."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None, "extensions_map": MIME})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def browser_site(tmp_path):
    """The serve page's in-browser engine as the server lays it out: browser.js and api.js, vendor/ (onnxruntime-web,
    edgecl-js = runtime/js, as runtime/web/vendor.mjs copies them), and /bundle/, a link to the bundle under test."""
    if not (ORT_WEB / "ort.wasm.min.mjs").is_file():
        pytest.skip("runtime/web/node_modules lacks onnxruntime-web: cd runtime/web && npm ci (.ci/setup-system.sh)")
    site = tmp_path / "site"
    (site / "vendor").mkdir(parents=True)
    for name in ("browser.js", "api.js"):
        shutil.copy(STATIC / name, site / name)
    (site / "vendor" / "onnxruntime-web").symlink_to(ORT_WEB)
    (site / "vendor" / "edgecl-js").symlink_to(JS)
    (site / "index.html").write_text("<!doctype html><title>edgecl signatures</title>")
    return site


# BrowserEngine.create(info) for each named /api/info in arguments[0]: "ok <classes>" or "<error name>: <message>"
ENGINES = """
const [infos, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const { BrowserEngine } = await import("/browser.js");
  const out = {};
  for (const [name, info] of Object.entries(infos)) {
    try { out[name] = "ok " + (await BrowserEngine.create(info)).bundle.classes.join(","); }
    catch (err) { out[name] = `${err.name}: ${err.message}`; }
  }
  return out;
})().then(done, (err) => done({ page: String(err) }));
"""


def in_browser(driver, url, site, bundle, infos):
    """The page's engines on ``bundle`` (served at /bundle/) for each /api/info of ``infos``."""
    link = site / "bundle"
    link.unlink(missing_ok=True)
    link.symlink_to(bundle)
    driver.get(f"{url}/index.html")
    return driver.execute_async_script(ENGINES, infos)


@pytest.mark.browser
def test_browser_engine_verifies_with_the_servers_keys(tmp_path, keys):
    """browser.js passes /api/info's public_keys to loadBundle: Chromium's WebCrypto accepts what the trusted key
    signed and refuses a foreign key, an unsigned manifest or update, and a tampered record, as Python does."""
    from serve_browser import chromium_driver

    trusted, foreign = (raw_b64(keys[k][1]) for k in ("trusted", "foreign"))
    bundles = {name: copy_fixture(tmp_path / name) for name in ("unsigned", "signed", "unsigned-update", "tampered")}
    for name in ("signed", "unsigned-update", "tampered"):
        store.sign_bundle(bundles[name], keys["trusted"][0])
        add_updates(bundles[name], *keys["trusted"])
    untrusted_update(bundles["unsigned-update"], keys)
    rewrite_last_record(bundles["tampered"], flip_first_float)
    info = {"model_file": "backbone.onnx", "default_top_k": 1}
    infos = {"none": {**info, "public_keys": []}, "trusted": {**info, "public_keys": [trusted]},
             "foreign": {**info, "public_keys": [foreign]}, "both": {**info, "public_keys": [foreign, trusted]}}
    want = {"signed": {"none": "ok", "trusted": "ok", "foreign": "which this client does not trust", "both": "ok"},
            "unsigned": {"none": "ok", "trusted": "is not signed", "both": "is not signed"},
            "unsigned-update": {"none": "ok", "trusted": "is not signed", "both": "is not signed"},
            "tampered": {"none": "ok", "trusted": "the signature does not match"}}
    site = browser_site(tmp_path)
    with static_site(site) as url, chromium_driver() as driver:
        for name, cases in want.items():
            got = in_browser(driver, url, site, bundles[name], {k: infos[k] for k in cases})
            for case, expect in cases.items():
                if expect == "ok":
                    classes = Bundle.load(bundles[name], cache=False).classes
                    assert got[case] == "ok " + ",".join(classes), (name, case, got)
                else:
                    assert got[case].startswith("SignatureError: ") and expect in got[case], (name, case, got)
                keys_given = [keys[k][1] for k in ("foreign", "trusted") if k == case or case == "both"]
                assert (python_decision(bundles[name], keys_given) == "ok") == (expect == "ok"), (name, case)
