"""Bundle manifest: what a bundle holds, its schema, its format versions and file checksums.

``manifest.json`` is validated against a hand-written schema (``validate``)
before any field is used, so a damaged or hand-edited manifest is refused with
a ``CorruptBundleError`` naming the field, and a manifest from a newer edgecl
with an ``IncompatibleBundleError`` saying to upgrade. Every format version the
runtime has shipped is read (``docs/bundle-format.md``):

* version 1: export + on-device additions, no journal (``history`` only);
* version 2: adds ``bundle_id``, the immutable ``base`` head state, the
  write-ahead ``journal`` and the dtype/shape of every head array.

A version-1 manifest is viewed as version 2 in memory (``as_v2``); the first
update rewrites it as version 2 on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from . import inputs, limits, signing, storage
from .errors import (
    CorruptBundleError,
    IncompatibleBundleError,
    InvalidInputError,
    LimitExceededError,
    MissingFileError,
    TamperedFileError,
)

MANIFEST_NAME = "manifest.json"
FORMAT = "edgecl-bundle"
FORMAT_VERSION = 3  # bump on any change an older runtime cannot read
READS_VERSIONS = (1, 2, 3)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[0-9A-Za-z_-]{8,80}$")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with os.fdopen(storage.open_regular(path), "rb") as f:  # never through a symbolic link
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def array_spec(arrays: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype", "shape"}}`` of head arrays, as the manifest records them."""
    return {k: {"dtype": str(v.dtype), "shape": [int(n) for n in v.shape]} for k, v in sorted(arrays.items())}


# ------------------------------------------------------------------ schema
def _fail(field: str, msg: str) -> None:
    raise CorruptBundleError(f"manifest field {field!r} {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


def _str(v) -> bool:
    return isinstance(v, str)


def _nonneg_int(v) -> bool:
    return _is_int(v) and v >= 0


def _pos_int(v) -> bool:
    return _is_int(v) and v > 0


def _file_name(v) -> bool:
    return isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v and "\\" not in v


def _names(v) -> bool:
    return isinstance(v, list) and all(type(x) is str and x for x in v)


def _list_of(check: Callable, n: int | None = None) -> Callable:
    return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(check(x) for x in v)


_RULES_V1: list[tuple[str, Callable, str]] = [
    ("edgecl_version", _str, "must be a string"),
    ("backbone", lambda v: isinstance(v, dict), "must be an object"),
    ("backbone.file", _file_name, "must be a file name inside the bundle"),
    ("backbone.embedding_dim", _pos_int, "must be a positive integer"),
    ("preprocess", lambda v: isinstance(v, dict), "must be an object"),
    ("preprocess.input_size", _list_of(_pos_int, 3), "must be 3 positive integers [C, H, W]"),
    ("preprocess.mean", _list_of(_is_num, 3), "must be 3 numbers"),
    ("preprocess.std", _list_of(lambda x: _is_num(x) and x > 0, 3), "must be 3 positive numbers"),
    ("head", lambda v: isinstance(v, dict), "must be an object"),
    ("head.kind", _str, "must be a string"),
    ("head.file", _file_name, "must be a file name inside the bundle"),
    ("classes", lambda v: _names(v), "must be a list of non-empty strings"),
    ("files", lambda v: isinstance(v, dict) and all(_file_name(k) for k in v), "must map file names to checksums"),
]
_RULES_V2 = _RULES_V1 + [
    ("bundle_id", lambda v: isinstance(v, str) and bool(_ID.match(v)), "must be an id of 8-80 letters, digits, _ or -"),
    ("head.arrays", lambda v: isinstance(v, dict) and len(v) > 0, "must describe the head arrays"),
    ("base", lambda v: isinstance(v, dict), "must be an object"),
    ("base.id", lambda v: isinstance(v, str) and bool(_ID.match(v)), "must be an id"),
    ("base.file", _file_name, "must be a file name inside the bundle"),
    ("base.seq", _nonneg_int, "must be an integer >= 0"),
    ("base.classes", lambda v: _names(v), "must be a list of non-empty strings"),
    ("base.arrays", lambda v: isinstance(v, dict) and len(v) > 0, "must describe the base head arrays"),
    ("journal", lambda v: isinstance(v, dict), "must be an object"),
    ("journal.file", _file_name, "must be a file name inside the bundle"),
    ("journal.seq", _nonneg_int, "must be an integer >= 0"),
    ("journal.bytes", _nonneg_int, "must be an integer >= 0"),
    ("journal.digest", lambda v: isinstance(v, str) and bool(_HEX64.match(v)), "must be a sha256 hex digest"),
    ("checksum", lambda v: isinstance(v, str) and bool(_HEX64.match(v)), "must be a sha256 hex digest"),
]
# Version 3: one ONNX file, ``model.file`` (backbone + fixed transform + head scoring), in place of
# ``backbone.file``; head files in the safetensors layout (``edgecl_runtime.tensors``).
_RULES_V3 = [r for r in _RULES_V2 if r[0] != "backbone.file"] + [
    ("model", lambda v: isinstance(v, dict), "must be an object"),
    ("model.file", _file_name, "must be a file name inside the bundle"),
    ("model.head_inputs", lambda v: isinstance(v, list) and all(_str(x) for x in v), "must list the head's input names"),
]
_MISSING = object()


def onnx_file(manifest: dict[str, Any]) -> str:
    """The bundle's ONNX file: ``model.file`` (version 3) or ``backbone.file`` (versions 1 and 2)."""
    return manifest["model"]["file"] if "model" in manifest else manifest["backbone"]["file"]


def single_file(manifest: dict[str, Any]) -> bool:
    """True when the ONNX file scores too (version 3: the head's state enters as graph inputs)."""
    return "model" in manifest


def _lookup(m: dict, dotted: str):
    cur: Any = m
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _check_arrays_spec(field: str, spec: dict) -> None:
    for name, entry in spec.items():
        if not (isinstance(entry, dict) and _str(entry.get("dtype")) and _list_of(_nonneg_int)(entry.get("shape"))):
            _fail(f"{field}.{name}", "must be {\"dtype\": str, \"shape\": [int, ...]}")


def check_version(manifest: Any, where: str) -> int:
    """The manifest's format version if this runtime reads it, else a clear error."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptBundleError(f"{where} is not an edgecl bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not _is_int(version):
        _fail("format_version", f"must be an integer, got {version!r}")
    if version not in READS_VERSIONS:
        newer = version > FORMAT_VERSION
        hint = "upgrade edgecl on this device" if newer else "re-export the bundle with this edgecl version"
        raise IncompatibleBundleError(
            f"bundle format version {version} (written by edgecl {manifest.get('edgecl_version', '?')}) is "
            f"{'newer than' if newer else 'not one of'} the versions this runtime reads "
            f"({', '.join(map(str, READS_VERSIONS))}): {hint}"
        )
    return version


def validate(manifest: dict[str, Any], version: int) -> None:
    """Check every field the runtime uses (types, ranges, cross-references); errors name the field."""
    from .heads import HEADS  # the registry of head kinds this runtime knows

    for field, check, msg in _RULES_V3 if version >= 3 else _RULES_V2 if version >= 2 else _RULES_V1:
        value = _lookup(manifest, field)
        if value is _MISSING:
            _fail(field, "is missing")
        if not check(value):
            _fail(field, f"{msg}, got {json.dumps(value)[:80]}")
    kind = manifest["head"]["kind"]
    if kind not in HEADS:
        _fail("head.kind", f"names an unknown head kind {kind!r}; this runtime knows {', '.join(sorted(HEADS))}")
    if len(set(manifest["classes"])) != len(manifest["classes"]):
        _fail("classes", "holds duplicate class names")
    files = manifest["files"]
    for name, entry in files.items():
        if not (isinstance(entry, dict) and _is_int(entry.get("bytes")) and isinstance(entry.get("sha256"), str)
                and _HEX64.match(entry["sha256"])):
            _fail(f"files.{name}", "must be {\"sha256\": hex, \"bytes\": int}")
    refs = [("model.file" if version >= 3 else "backbone.file", onnx_file(manifest)), ("head.file", manifest["head"]["file"])]
    if version >= 2:
        refs.append(("base.file", manifest["base"]["file"]))
        _check_arrays_spec("head.arrays", manifest["head"]["arrays"])
        _check_arrays_spec("base.arrays", manifest["base"]["arrays"])
        if manifest["journal"]["seq"] < manifest["base"]["seq"]:
            _fail("journal.seq", "is below base.seq")
    for field, name in refs:
        if name not in files:
            _fail(field, f"names {name!r}, which has no checksum in 'files'")


CHECKSUM_FIELD = "checksum"


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, compact) without its ``checksum`` field.

    The manifest holds the checksums of every other file; this one protects the
    manifest itself, so an edited class name or a flipped bit in it is refused too.
    """
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``checksum`` field set (every writer of a version-2 manifest calls this)."""
    out = signing.on_seal({k: v for k, v in manifest.items() if k != CHECKSUM_FIELD})
    out[CHECKSUM_FIELD] = manifest_checksum(out)
    return out


def check_seal(manifest: dict[str, Any], where: str) -> tuple[str, str] | None:
    """``None`` if the version-2 manifest's checksum matches its content, else ``(stored, actual)``."""
    actual = manifest_checksum(manifest)
    stored = manifest.get(CHECKSUM_FIELD)
    return None if stored == actual else (str(stored), actual)


def read_manifest_bytes(bundle_dir: Path) -> bytes:
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise MissingFileError(f"bundle directory not found: {bundle_dir}")
    try:
        return storage.read_regular(path)
    except FileNotFoundError:
        raise MissingFileError(f"not an edgecl bundle: {path} is missing") from None
    except PermissionError as exc:
        raise storage.storage_error(exc, f"read {path}", unchanged=False) from exc
    except OSError as exc:
        raise CorruptBundleError(f"cannot read {path}: {exc}") from exc


def parse_manifest(raw: bytes, where: str) -> tuple[dict[str, Any], int]:
    """Parse, version-check and validate manifest bytes; returns ``(manifest, version)``."""
    try:
        manifest = limits.json_loads(raw.decode("utf-8"), where)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptBundleError(f"{where} is not valid JSON: {exc}") from exc
    except LimitExceededError as exc:
        raise CorruptBundleError(str(exc)) from exc
    version = check_version(manifest, where)
    validate(manifest, version)
    check_class_names(manifest)
    return manifest, version


def check_class_names(manifest: dict[str, Any]) -> None:
    """Every class name in the manifest must be one ``add_class`` accepts, in normal form (``inputs.class_name``)."""
    for field in ("classes", "base.classes"):
        names = _lookup(manifest, field)
        if names is _MISSING:
            continue
        for i, name in enumerate(names):
            try:
                ok = inputs.class_name(name) == name
            except InvalidInputError as exc:
                _fail(f"{field}[{i}]", f"is not a valid class name: {exc}")
            if not ok:
                _fail(f"{field}[{i}]", f"is not NFC-normalised: {json.dumps(name)[:80]}")


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """The validated manifest of ``bundle_dir`` as stored (any readable version)."""
    return parse_manifest(read_manifest_bytes(bundle_dir), str(bundle_dir / MANIFEST_NAME))[0]


def v1_bundle_id(manifest: dict[str, Any]) -> str:
    """A deterministic id for a version-1 bundle (which has none): its backbone and head checksums."""
    files = manifest["files"]
    key = files[manifest["backbone"]["file"]]["sha256"] + files[manifest["head"]["file"]]["sha256"]
    return "v1-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def verify_files(
    bundle_dir: Path, manifest: dict[str, Any], names: list[str] | None = None, collect: list | None = None
) -> None:
    """Check presence, size and sha256 of every listed file (or of ``names``).

    A mismatch raises ``TamperedFileError``; with ``collect`` (a list) it is
    appended there as ``(name, expected entry, actual entry)`` instead.
    """
    files = manifest["files"]
    for name in names if names is not None else list(files):
        if name not in files:
            raise CorruptBundleError(f"manifest lists no checksum for {name}")
        path = bundle_dir / name
        try:
            _verify_one(path, files[name], collect, name)
        except FileNotFoundError:  # also when a writer removed it while we read (the caller retries)
            raise MissingFileError(f"bundle file missing: {path}") from None


def _verify_one(path: Path, entry: dict[str, Any], collect: list | None, name: str) -> None:
    storage.check_regular(path)
    size = path.stat().st_size
    if size != entry.get("bytes"):
        if collect is not None:
            collect.append((name, entry, file_entry(path)))
            return
        raise TamperedFileError(
            f"{path}: size {size} differs from the manifest's {entry.get('bytes')} (truncated or modified)"
        )
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        if collect is not None:
            collect.append((name, entry, {"sha256": digest, "bytes": size}))
            return
        raise TamperedFileError(f"{path}: sha256 {digest[:12]}… differs from the manifest (corrupt or tampered)")
