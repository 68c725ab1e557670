"""The Flask application of ``edgecl serve``: the page, its static assets and the JSON API (docs/serve-api.md)."""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from importlib.resources import files
from pathlib import Path

from flask import Flask, Response, g, jsonify, request, send_file
from werkzeug.exceptions import HTTPException

from .. import signing
from ..errors import EdgeclRuntimeError, InvalidInputError, LockTimeoutError, SignatureError
from .errors import HTTPError, bad_request, error_response, not_found
from .security import Guard, install
from .state import ServedBundle
from .uploads import decode_data_url, decode_files

API_VERSION = 1
DEFAULT_TOP_K = 5
MAX_BODY = 32 << 20  # bytes per request
TOKEN_ENV = "EDGECL_SERVE_TOKEN"
STATIC = Path(str(files("edgecl_runtime.serve") / "static"))
OPENAPI = Path(str(files("edgecl_runtime.serve") / "openapi.json"))  # the API's OpenAPI 3 document


def create_app(served: ServedBundle, token: str | None = None, max_body: int = MAX_BODY,
               guard: Guard | None = None) -> Flask:
    """The app serving ``served``, guarded by ``guard`` (default: loopback names only, and ``token`` if given).

    With a token every request must carry it (else 401); writes must come from the page's own origin
    with the page's XSRF header or the token (else 403); see ``security``.
    """
    app = Flask("edgecl_runtime.serve", static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.json.sort_keys = False
    _errors(app)
    install(app, guard or Guard(token=token))
    _signing_policy(app, served)
    _pages(app, served)
    _reads(app, served)
    _updates(app, served)
    return app


def _errors(app: Flask) -> None:
    app.register_error_handler(HTTPError, lambda e: error_response(e.status, e.message))
    app.register_error_handler(InvalidInputError, lambda e: error_response(400, str(e)))
    app.register_error_handler(SignatureError, lambda e: error_response(403, f"signature: {e}"))
    app.register_error_handler(LockTimeoutError, lambda e: error_response(503, f"the bundle is busy: {e}"))
    app.register_error_handler(EdgeclRuntimeError, lambda e: error_response(500, f"{type(e).__name__}: {e}"))

    @app.errorhandler(HTTPException)
    def httperror_response(e: HTTPException):
        if e.code == 413:
            return error_response(413, f"request body too large; the limit is {app.config['MAX_CONTENT_LENGTH']} bytes")
        response, status = error_response(e.code or 500, e.description or e.name)
        for name, value in e.get_headers():  # e.g. a 405's Allow (RFC 9110); the body is JSON, not werkzeug's HTML
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status


def _signing_policy(app: Flask, served: ServedBundle) -> None:
    """Each request runs under the signing keys in force where the server was made (threads start without them)."""

    @app.before_request
    def enter():
        g.edgecl_signing = ExitStack()
        g.edgecl_signing.enter_context(signing.using(served.policy))

    @app.teardown_request
    def leave(_exc):
        stack = g.pop("edgecl_signing", None)
        if stack is not None:
            stack.close()


def _pages(app: Flask, served: ServedBundle) -> None:
    @app.get("/")
    def index():
        return send_file(STATIC / "index.html", max_age=0)

    @app.get("/api/thumbs/<name>")
    def thumb(name):
        path = served.thumbs.file(name)
        if path is None:
            raise not_found(f"no thumbnail {name!r}")
        return send_file(path, mimetype="image/jpeg", max_age=3600)

    @app.get("/bundle/<name>")
    def bundle_file(name):
        if name not in served.bundle_files() or not (served.path / name).is_file():
            raise not_found(f"{name!r} is not a file of the bundle now (re-read manifest.json)")
        return send_file(served.path / name, mimetype="application/octet-stream", max_age=0, etag=False)

    @app.get("/api/bundle.zip")
    def bundle_zip():
        return Response(served.zip_bytes(), mimetype="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{served.path.name}.zip"'})


def _top_k() -> int:
    raw = request.args.get("top_k", str(DEFAULT_TOP_K))
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:  # str.isdigit() is also true of '²', which int() refuses
        raise bad_request(f"top_k must be a positive integer, got {raw!r}")
    return int(raw)


def _reads(app: Flask, served: ServedBundle) -> None:
    @app.get("/api/info")
    def info():
        return jsonify(_info(served))

    @app.get("/api/openapi.json")
    def openapi():
        return Response(OPENAPI.read_bytes(), mimetype="application/json")

    @app.get("/api/classes")
    def classes():
        return jsonify({"classes": served.classes()})

    @app.get("/api/history")
    def history():
        return jsonify(served.history())

    @app.post("/api/predict")
    def predict():
        images = decode_files(request.files.getlist("image"))
        return jsonify(served.predict(images, _top_k(), _unknown_threshold(served.bundle.manifest)))


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # a decimal number, ASCII only


def _unknown_threshold(manifest: dict) -> float | None:
    """The threshold of ``?unknown=``: ``auto`` (the default) the bundle's calibrated one (none when it has
    none, unless asked for explicitly: 400), ``off`` none, a number itself."""
    raw = request.args.get("unknown")
    calibrated = (manifest.get("unknown") or {}).get("threshold")
    if raw in (None, "auto"):
        if raw == "auto" and calibrated is None:
            raise bad_request("this bundle has no calibrated unknown threshold: pass ?unknown=NUMBER or ?unknown=off")
        return None if calibrated is None else float(calibrated)
    if raw == "off":
        return None
    if not NUMBER.fullmatch(raw) or not math.isfinite(float(raw)):
        raise bad_request(f"unknown must be 'auto', 'off' or a finite number, got {raw!r}")
    return float(raw)


def _teach(served: ServedBundle, name, create: bool):
    """A teach request: multipart images, or JSON feature rows (from the in-browser mode)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "features" not in body:
            raise bad_request("JSON body must be an object with 'features' (and 'name' on create)")
        name = body.get("name") if create else name
        thumbs = body.get("thumbnails") or []
        if not isinstance(thumbs, list):
            raise bad_request("'thumbnails' must be a list of data: URLs")
        images = [decode_data_url(t, f"thumbnail {i}") for i, t in enumerate(thumbs[:64])]
        return served.teach(name, create, features=body["features"], thumbnails=images)
    if create:
        name = request.form.get("name")
        if name is None:
            raise bad_request("missing form field 'name' (the class name)")
    return served.teach(name, create, images=decode_files(request.files.getlist("image")))


def _updates(app: Flask, served: ServedBundle) -> None:
    @app.post("/api/classes")
    def create_class():
        return jsonify(_teach(served, None, create=True)), 201

    @app.post("/api/classes/<name>/examples")
    def add_examples(name):
        return jsonify(_teach(served, name, create=False))

    @app.delete("/api/classes/<name>")
    def remove_class(name):
        return jsonify(served.remove(name))

    @app.post("/api/rollback")
    def rollback():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "to" not in body:
            raise bad_request("JSON body must be {\"to\": UPDATE_NUMBER} (see GET /api/history)")
        return jsonify(served.rollback(body["to"]))


def _info(served: ServedBundle) -> dict:
    b = served.bundle
    classes, _, seq = served.current()
    m = b.manifest
    model_file = (m.get("model") or m.get("backbone") or {}).get("file")
    browser = _browser_mode(m)
    return {
        "api_version": API_VERSION,
        "name": served.path.name,
        "format_version": m.get("format_version"),
        "head": m["head"]["kind"],
        "backbone": (m.get("backbone") or m.get("model") or {}).get("name"),
        "input_size": m["preprocess"]["input_size"],
        "preprocess": m["preprocess"],
        "num_classes": len(classes),
        "seq": seq,
        "device": b.device,
        "model_file": model_file,
        "browser_mode": browser is None,
        "browser_mode_unavailable": browser,
        "default_top_k": DEFAULT_TOP_K,
        "public_keys": served.public_keys(),
    }


def _browser_mode(m: dict) -> str | None:
    """Why the page cannot run this bundle in the browser, or None when it can."""
    if m["head"]["kind"] != "prototype_cosine":
        return f"the in-browser mode runs prototype_cosine heads; this bundle's head is {m['head']['kind']}"
    if int(m.get("format_version", 0)) < 2:
        return "the in-browser mode needs a bundle of format 2 or later"
    if not (STATIC / "vendor" / "onnxruntime-web" / "ort.wasm.min.mjs").is_file():
        return "onnxruntime-web is not packaged: run `npm ci && node vendor.mjs` in runtime/web"
    return None
