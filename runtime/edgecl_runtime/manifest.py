"""Bundle manifest: what a bundle holds, its schema, its format versions and file checksums.

``manifest.json`` is validated against the schema of ``manifest_schema``
(``validate``) before any field is used, so a damaged or hand-edited manifest is refused with
a ``CorruptBundleError`` naming the field, and a manifest from a newer edgecl
with an ``IncompatibleBundleError`` saying to upgrade. Every format version the
runtime has shipped is read (``docs/bundle-format.md``):

* version 1: export + on-device additions, no journal (``history`` only);
* version 2: adds ``bundle_id``, the immutable ``base`` head state, the
  write-ahead ``journal`` and the dtype/shape of every head array.

A version-1 manifest is viewed as version 2 in memory (``as_v2``); the first
update rewrites it as version 2 on disk. ``new_manifest`` builds the manifest an export writes,
checked against the same schema.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import inputs, limits, signing, storage
from .errors import (
    CorruptBundleError,
    IncompatibleBundleError,
    InvalidInputError,
    LimitExceededError,
    MissingFileError,
    TamperedFileError,
)
from .manifest_schema import HEX64, is_int, list_of, nonneg_int, rules

MANIFEST_NAME = "manifest.json"
FORMAT = "edgecl-bundle"
FORMAT_VERSION = 3  # bump on any change an older runtime cannot read
READS_VERSIONS = (1, 2, 3)


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


# ------------------------------------------------------------------ schema (edgecl_runtime.manifest_schema)
def _fail(field: str, msg: str) -> None:
    raise CorruptBundleError(f"manifest field {field!r} {msg}")


_MISSING = object()


def onnx_file(manifest: dict[str, Any]) -> str:
    """The bundle's ONNX file: ``model.file`` (version 3) or ``backbone.file`` (versions 1 and 2)."""
    return manifest["model"]["file"] if "model" in manifest else manifest["backbone"]["file"]


def fixed_files(manifest: dict[str, Any]) -> list[str]:
    """The files every state of the bundle keeps unchanged: its ONNX file and, when listed, the optional text
    tower (docs/clip.md)."""
    text = (manifest.get("text") or {}).get("file")
    return [onnx_file(manifest)] + ([text] if text in manifest["files"] else [])


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
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and list_of(nonneg_int)(entry.get("shape"))):
            _fail(f"{field}.{name}", "must be {\"dtype\": str, \"shape\": [int, ...]}")


def check_version(manifest: Any, where: str) -> int:
    """The manifest's format version if this runtime reads it, else a clear error."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptBundleError(f"{where} is not an edgecl bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not is_int(version):
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


def check_fields(manifest: dict[str, Any], fields) -> None:
    """Each ``manifest_schema.Field`` of ``fields`` present and passing its check; else the first failing one."""
    for f in fields:
        value = _lookup(manifest, f.path)
        if value is _MISSING:
            _fail(f.path, "is missing")
        if not f.check(value):
            _fail(f.path, f"{f.msg}, got {json.dumps(value)[:80]}")


def validate(manifest: dict[str, Any], version: int) -> None:
    """Check every field the runtime uses (types, ranges, cross-references); errors name the field."""
    from .heads import HEADS  # the registry of head kinds this runtime knows

    check_fields(manifest, rules(version))
    kind = manifest["head"]["kind"]
    if kind not in HEADS:
        _fail("head.kind", f"names an unknown head kind {kind!r}; this runtime knows {', '.join(sorted(HEADS))}")
    if len(set(manifest["classes"])) != len(manifest["classes"]):
        _fail("classes", "holds duplicate class names")
    files = manifest["files"]
    for name, entry in files.items():
        if not (isinstance(entry, dict) and is_int(entry.get("bytes")) and isinstance(entry.get("sha256"), str)
                and HEX64.match(entry["sha256"])):
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


def new_manifest(sections: dict[str, Any]) -> dict[str, Any]:
    """A sealed manifest of the current format from ``sections`` (every top-level field but ``format``,
    ``format_version`` and ``checksum``), checked against all the fields a writer must set and against
    what every reader checks, so an export never writes a manifest that a device would refuse."""
    manifest = {"format": FORMAT, **sections, "format_version": FORMAT_VERSION}
    sealed = seal(manifest)
    check_fields(sealed, rules(FORMAT_VERSION, writing=True))
    validate(sealed, FORMAT_VERSION)
    check_class_names(sealed)
    return sealed


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
