"""`edgecl serve`'s OpenAPI document (serve/openapi.json): it equals docs/serve-api.md and the app, and the server keeps it.

schemathesis fuzzes every operation in process, through the Flask WSGI app, with valid and invalid requests
(bounded and derandomised: the same requests on every run). Every response must be documented (status code,
content type, body schema), no request may get a 5xx, a request answered with an error must leave the bundle's
files unchanged, and after the run the bundle must still load and verify. Hand-made requests then take every
operation through its success path and through the guard's refusals.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")
schemathesis = pytest.importorskip("schemathesis")
Image = pytest.importorskip("PIL.Image")

from flask import Flask  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from edgecl_runtime import Bundle, store  # noqa: E402
from edgecl_runtime.serve import ServedBundle, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serve-api.md"
OPENAPI = Path(str(files("edgecl_runtime.serve") / "openapi.json"))
DOCUMENT = json.loads(OPENAPI.read_text())
METHODS = ("get", "post", "put", "patch", "delete")
TOKEN = "openapi-fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TAUGHT = "mug"  # the class the document's examples name: taught before fuzzing, so those examples reach 200
# Per operation, in the fuzzing phase (the examples and coverage phases add their own few); a deeper local run:
# EDGECL_FUZZ_EXAMPLES=1000 EDGECL_FUZZ_SEED=7 pytest tests/test_serve_openapi.py
MAX_EXAMPLES = int(os.environ.get("EDGECL_FUZZ_EXAMPLES", 60))
SEED = os.environ.get("EDGECL_FUZZ_SEED")  # by default the same requests on every run (derandomised)


def documented() -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) -> status codes, from the OpenAPI document."""
    return {(m.upper(), path): {int(c) for c in op["responses"]}
            for path, item in DOCUMENT["paths"].items() for m, op in item.items() if m in METHODS}


# ----------------------------------------------------------------- the document, the docs and the app agree
def api_section() -> str:
    text = DOC.read_text()
    start = text.index("\n## API\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def doc_endpoints() -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) -> status codes of each `### METHOD PATH` heading of docs/serve-api.md's API section,
    from the ``Status codes: ...`` line under it."""
    out: dict[tuple[str, str], set[int]] = {}
    parts = re.split(r"^### ", api_section(), flags=re.M)[1:]
    for part in parts:
        heading, _, body = part.partition("\n")
        m = re.match(r"`(GET|POST|PUT|PATCH|DELETE) (/\S*)`", heading)
        assert m, f"API headings are `METHOD PATH`: {heading!r}"
        codes = re.findall(r"^Status codes: ((?:\d{3}, )*\d{3})\.$", body, flags=re.M)
        assert len(codes) == 1, f"{heading}: one line 'Status codes: 200, 401, ...' under each endpoint"
        key = (m[1], m[2])
        assert key not in out, f"{key} twice in the docs"
        out[key] = {int(c) for c in codes[0].split(", ")}
    return out


def test_the_docs_and_the_document_describe_the_same_endpoints_and_status_codes():
    doc, spec = doc_endpoints(), documented()
    assert set(doc) == set(spec), f"only in the docs: {set(doc) - set(spec)}; only in openapi.json: {set(spec) - set(doc)}"
    for key in spec:
        assert doc[key] == spec[key], f"{key}: docs say {sorted(doc[key])}, openapi.json {sorted(spec[key])}"
    table = {int(c) for c in re.findall(r"^\| (\d{3}) \|", api_section(), flags=re.M)}
    errors = {c for codes in spec.values() for c in codes if c >= 400}
    assert table == errors, "the docs' table of error codes lists each code some endpoint answers"


def test_the_document_describes_every_route_of_the_app(bundle_dir):
    app = create_app(ServedBundle(bundle_dir))
    routes = {(m, re.sub(r"<[^>]*>", "{}", rule.rule))  # path parameters by place, not by name
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == {(m, re.sub(r"{[^}]*}", "{}", path)) for m, path in documented()}
    for path, item in DOCUMENT["paths"].items():
        for m, op in item.items():
            errors = {int(c) for c in op["responses"] if int(c) >= 400}
            write = m not in ("get", "head", "options")
            assert {401, 403} <= errors, f"{m} {path}: the guard's refusals"
            assert any("xsrfHeader" in s for s in op["security"]) == write, f"{m} {path}: a write's secret"


def test_the_server_serves_its_document(bundle_dir):
    client = create_app(ServedBundle(bundle_dir), token=TOKEN).test_client()
    r = client.get("/api/openapi.json", headers=AUTH)
    assert r.status_code == 200 and r.mimetype == "application/json" and r.get_json() == DOCUMENT
    schemathesis.openapi.from_dict(DOCUMENT).validate()  # a valid OpenAPI document


# ----------------------------------------------------------------------------------------------- fuzzing
def not_a_server_error(ctx, response, case):
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:2000]}"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, unsupported_method, missing_required_header]
CONFIG = SchemathesisConfig.from_dict({
    "seed": int(SEED or 35),
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": SEED is None, "database": "none",
                   "with-security-parameters": False},  # every request carries the bearer token (AUTH)
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
               "stateful": {"enabled": False}},
    # An invalid request gets a 4xx: 413 too (65 images, a feature row too many), 415 (a file that is no image)
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "415"]}},
})
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG)


def png(seed: int, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def feature_dim(bundle_dir: Path) -> int:
    return int(json.loads((bundle_dir / "manifest.json").read_text())["backbone"]["embedding_dim"])


class Served:
    """The app under test (token ``TOKEN``) on a private bundle with the class ``TAUGHT``."""

    def __init__(self, bundle_dir: Path):
        self.dir = bundle_dir
        rows = np.random.default_rng(0).standard_normal((2, feature_dim(bundle_dir))).astype(np.float32)
        store.add_examples(bundle_dir, TAUGHT, rows)
        self.app = create_app(ServedBundle(bundle_dir), token=TOKEN)

    def call(self, case, headers=AUTH, **kwargs):
        """The case's request, checked against the document; a refused one must not have changed the bundle."""
        before = store.snapshot_files(self.dir)
        response = case.call(app=self.app, headers=headers, **kwargs)
        case.validate_response(response, checks=CHECKS, headers=headers)
        if response.status_code >= 400:
            assert store.snapshot_files(self.dir) == before, \
                f"{case.method} {case.formatted_path} -> {response.status_code} changed the bundle"
        return response


def assert_sound(bundle_dir: Path) -> None:
    """The bundle loads, every file matches the manifest and the journal chain verifies."""
    state = store.read_state(bundle_dir, verify=True, full=True)
    b = Bundle.load(bundle_dir)
    assert b.classes == state.classes and b.seq == state.seq
    assert store.history(bundle_dir)["seq"] == state.seq


@pytest.fixture
def served(bundle_dir):
    s = Served(bundle_dir)
    yield s
    assert_sound(bundle_dir)  # after all of an operation's requests


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_the_server_keeps_its_document(case, served):
    served.call(case)


# ----------------------------------------------------------------------- every operation, by hand
def operation(label: str):
    method, path = label.split(" ", 1)
    return schema[path][method]


def test_every_operation_succeeds_and_refuses_as_documented(served):
    """A valid request to each operation gets its documented 2xx; without the token 401; from a foreign Host 403;
    a write with the token but from another origin, or with no secret (``?token=`` only), 403."""
    dim = feature_dim(served.dir)
    rows = np.random.default_rng(1).standard_normal((3, dim)).astype(np.float32).tolist()
    thumb = "data:image/png;base64," + base64.b64encode(png(5)).decode()
    multipart = "multipart/form-data"
    requests = [
        ("GET /", {}),
        ("GET /api/info", {}),
        ("GET /api/openapi.json", {}),
        ("POST /api/predict", {"query": {"top_k": 3}, "body": {"image": [png(0), png(1)]}, "media_type": multipart}),
        ("POST /api/classes", {"body": {"name": "noise", "image": [png(1), png(2)]}, "media_type": multipart}),
        ("POST /api/classes", {"body": {"name": "rows", "features": rows, "thumbnails": [thumb]},
                               "media_type": "application/json"}),
        ("POST /api/classes/{name}/examples", {"path_parameters": {"name": "noise"}, "body": {"image": [png(3)]},
                                               "media_type": multipart}),
        ("POST /api/classes/{name}/examples", {"path_parameters": {"name": "rows"}, "body": {"features": rows[:1]},
                                               "media_type": "application/json"}),
        ("GET /api/classes", {}),
        ("DELETE /api/classes/{name}", {"path_parameters": {"name": "rows"}}),
        ("GET /api/history", {}),
        ("POST /api/rollback", {"body": {"to": 3}, "media_type": "application/json"}),
        ("GET /api/bundle.zip", {}),
        ("GET /bundle/{file}", {"path_parameters": {"file": "manifest.json"}}),
    ]
    done = {}
    for label, kwargs in requests:
        r = served.call(operation(label).Case(**kwargs))
        assert r.status_code in (200, 201), (label, r.status_code, r.text)
        done[label] = kwargs
    thumbs = [t for c in served.app.test_client().get("/api/classes", headers=AUTH).get_json()["classes"]
              for t in c["thumbnails"]]
    assert len(thumbs) == 3  # noise's 2 of update 2, rows' 1 of update 3 (the rollback to 3 dropped update 4's)
    done["GET /api/thumbs/{file}"] = {"path_parameters": {"file": thumbs[0]}}
    assert served.call(operation("GET /api/thumbs/{file}").Case(**done["GET /api/thumbs/{file}"])).status_code == 200
    assert {tuple(label.split(" ", 1)) for label in done} == set(documented()), "a request for every operation"

    for label, kwargs in done.items():
        write = not label.startswith("GET ")
        refusals = [({}, {}, 401), ({**AUTH, "Host": "evil.example"}, {}, 403)]
        if write:  # from another origin; with the token but no secret (the cookie or ?token= a form could carry)
            refusals += [({**AUTH, "Origin": "http://evil.example"}, {}, 403),
                         ({}, {"cookies": {"edgecl_token": TOKEN}}, 403), ({}, {"params": {"token": TOKEN}}, 403)]
        for headers, extra, status in refusals:
            r = served.call(operation(label).Case(**kwargs), headers=headers, **extra)
            assert r.status_code == status, (label, headers, extra, r.status_code, r.text)


def test_the_document_catches_a_wrong_answer(served):
    """The checks fail on a response of the wrong shape, an undocumented status code or content type."""
    info = served.app.test_client().get("/api/info", headers=AUTH).get_json()
    wrong = [
        ({k: v for k, v in info.items() if k != "seq"}, 200, "application/json"),  # a key missing
        ({**info, "extra": 1}, 200, "application/json"),  # a key not documented
        ({**info, "num_classes": "30"}, 200, "application/json"),  # a wrong type
        ({"error": "x", "status": 404}, 401, "application/json"),  # an error body naming another status
        ({"error": "x", "status": 418}, 418, "application/json"),  # an undocumented status
        (info, 200, "text/plain"),  # an undocumented content type
    ]
    for body, status, mimetype in wrong:
        fake = Flask("fake")
        fake.get("/api/info")(lambda body=body, status=status, mimetype=mimetype: fake.response_class(
            json.dumps(body), status=status, mimetype=mimetype))
        case = operation("GET /api/info").Case()
        with pytest.raises(FailureGroup):
            case.validate_response(case.call(app=fake), checks=CHECKS)


# ------------------------------------------------------------------- regressions the fuzzing found
@pytest.mark.parametrize("top_k", ["²", "٣", "-1", "0", "1.5", "", " 3"])
def test_a_top_k_that_is_not_an_ascii_positive_integer_is_a_400(served, top_k):
    """``'²'.isdigit()`` is true but ``int('²')`` raises: it was a 500."""
    case = operation("POST /api/predict").Case(query={"top_k": top_k}, body={"image": [png(0)]},
                                               media_type="multipart/form-data")
    r = served.call(case)
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_feature_values_beyond_float32_are_a_400_without_a_warning(served):
    """JSON numbers over float32's range became inf with a RuntimeWarning in the server's log; now only the 400."""
    rows = [[1e39] * feature_dim(served.dir)]
    case = operation("POST /api/classes").Case(body={"name": "huge", "features": rows}, media_type="application/json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = served.call(case)
    assert r.status_code == 400 and "infinite" in r.json()["error"]


@pytest.mark.parametrize("method, path, allowed", [
    ("PATCH", "/api/info", {"GET"}), ("PUT", "/api/classes", {"GET", "POST"}), ("TRACE", "/api/classes/mug", {"DELETE"}),
])
def test_a_method_the_resource_has_not_is_a_405_with_allow(served, method, path, allowed):
    """The JSON error handler dropped werkzeug's headers: a 405 had no ``Allow`` (RFC 9110; schemathesis ST204)."""
    r = served.app.test_client().open(path, method=method, headers=AUTH)
    assert r.status_code == 405 and r.get_json()["status"] == 405
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}
