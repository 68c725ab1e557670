"""Bundle manifest: what a bundle holds, how to preprocess, and file checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import CorruptBundleError, IncompatibleBundleError, MissingFileError

MANIFEST_NAME = "manifest.json"
FORMAT = "edgecl-bundle"
FORMAT_VERSION = 1  # bump on any change an older runtime cannot read

REQUIRED_KEYS = ("format", "format_version", "edgecl_version", "backbone", "preprocess", "head", "classes", "files")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise MissingFileError(f"bundle directory not found: {bundle_dir}")
    if not path.is_file():
        raise MissingFileError(f"not an edgecl bundle: {path} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptBundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptBundleError(f"{path} is not an edgecl bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade edgecl on this device" if isinstance(version, int) and version > FORMAT_VERSION else (
            "re-export the bundle with this edgecl version"
        )
        raise IncompatibleBundleError(
            f"bundle format version {version!r} (written by edgecl {manifest.get('edgecl_version', '?')}) "
            f"is not supported by this runtime, which reads version {FORMAT_VERSION}: {hint}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CorruptBundleError(f"{path} lacks required keys: {', '.join(missing)}")
    return manifest


def verify_files(bundle_dir: Path, manifest: dict[str, Any], names: list[str] | None = None) -> None:
    """Check presence, size and sha256 of every listed file (or of ``names``)."""
    files = manifest["files"]
    for name in names if names is not None else list(files):
        if name not in files:
            raise CorruptBundleError(f"manifest lists no checksum for {name}")
        if Path(name).name != name:
            raise CorruptBundleError(f"manifest names a file outside the bundle: {name!r}")
        path = bundle_dir / name
        if not path.is_file():
            raise MissingFileError(f"bundle file missing: {path}")
        entry = files[name]
        if path.stat().st_size != entry.get("bytes"):
            raise CorruptBundleError(
                f"{path}: size {path.stat().st_size} differs from the manifest's {entry.get('bytes')} "
                "(truncated or modified)"
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise CorruptBundleError(f"{path}: sha256 {digest[:12]}… differs from the manifest (corrupt or tampered)")
