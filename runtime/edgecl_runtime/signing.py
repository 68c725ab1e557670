"""Signed bundles: Ed25519 signatures over the manifest and the journal records (``cryptography``, extra ``[sign]``).

The manifest's ``checksum`` and the journal's digests are plain sha256: they
detect damage, not forgery (anyone can recompute them). A publisher who signs
a bundle (``edgecl sign`` / ``export --sign``) adds a ``signature`` field to
the manifest, over its canonical JSON without ``checksum`` and ``signature``;
through the manifest's file checksums and the journal's hash chain up to
``journal.digest`` it covers every file and every record of the snapshot. Each
record appended after the snapshot carries its own ``sig`` in its header,
over the previous record's digest and the record without ``sig``.

A device configured with public keys (``Bundle.load(..., public_key=...)``,
CLI ``edgecl --public-key KEY.pub``, or env ``EDGECL_PUBLIC_KEY``, paths
separated by ``os.pathsep``) refuses, with ``SignatureError``, a manifest or
record that is unsigned or signed by another key, and can update the bundle
only with a signing key whose public key it trusts (``signing_key=...``,
``--signing-key``, env ``EDGECL_SIGNING_KEY``): its own updates are then
signed. A writer without keys drops a manifest signature that its update
would invalidate. Threat model: docs/bundle-format.md, *Signed bundles*.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import InvalidInputError, MissingDependencyError, SignatureError

ALG = "ed25519"
FIELD = "signature"  # in the manifest
RECORD_FIELD = "sig"  # in a journal record's header
ENV_PUBLIC = "EDGECL_PUBLIC_KEY"
ENV_SIGNING = "EDGECL_SIGNING_KEY"
INSTALL = "pip install 'edgecl-runtime[sign]'"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise MissingDependencyError(f"signed bundles need the cryptography package: {INSTALL}") from exc
    return serialization, ed25519


# --------------------------------------------------------------------- keys
def raw_public(pub) -> bytes:
    serialization, _ = _crypto()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub) -> str:
    """16 hex digits naming a public key (sha256 of its raw bytes)."""
    return hashlib.sha256(raw_public(pub)).hexdigest()[:16]


def _pem(source) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii")
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read key file {source}: {exc}") from exc


def load_private_key(source):
    """An Ed25519 private key from a PEM file path, PEM bytes/str, or a key object."""
    serialization, ed25519 = _crypto()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    try:
        key = serialization.load_pem_private_key(_pem(source), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InvalidInputError("the signing key must be an Ed25519 key (edgecl keygen)")
    return key


def load_public_key(source):
    """An Ed25519 public key from a PEM file path, PEM bytes/str, a key object, or a private key."""
    serialization, ed25519 = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source.public_key()
    try:
        key = serialization.load_pem_public_key(_pem(source))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInputError("the public key must be an Ed25519 key (edgecl keygen)")
    return key


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (mode 0600, never over an existing file) and its
    public key to ``path.pub``; returns both paths."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for p, data, mode in ((path, private, 0o600), (pub_path, public, 0o644)):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        except FileExistsError:
            raise InvalidInputError(f"{p} exists; keygen never overwrites a key") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return path, pub_path


# ------------------------------------------------------------------- policy
@dataclass(frozen=True)
class Policy:
    """Which keys a process trusts, and which one it signs its own updates with."""

    trusted: tuple = ()  # Ed25519 public keys; empty: signatures are not checked
    signer: Any = None  # Ed25519 private key, or None

    @property
    def active(self) -> bool:
        return bool(self.trusted)

    def fingerprint(self) -> tuple:
        return tuple(sorted(key_id(k) for k in self.trusted)), key_id(self.signer.public_key()) if self.signer else ""


_POLICY: ContextVar[Policy | None] = ContextVar("edgecl_signing_policy", default=None)
_ENV_CACHE: dict[tuple, Policy] = {}


def make_policy(public_key=None, signing_key=None) -> Policy:
    """A policy from keys (a path, PEM, key object, or a list of them for ``public_key``); ``None`` takes
    the environment variables ``EDGECL_PUBLIC_KEY`` / ``EDGECL_SIGNING_KEY``."""
    if public_key is None and os.environ.get(ENV_PUBLIC):
        public_key = [p for p in os.environ[ENV_PUBLIC].split(os.pathsep) if p]
    if signing_key is None and os.environ.get(ENV_SIGNING):
        signing_key = os.environ[ENV_SIGNING]
    if public_key is None and signing_key is None:
        return Policy()
    keys = public_key if isinstance(public_key, (list, tuple)) else ([] if public_key is None else [public_key])
    signer = load_private_key(signing_key) if signing_key is not None else None
    return Policy(tuple(load_public_key(k) for k in keys), signer)


def current() -> Policy:
    """The policy in force: the innermost ``using``, else the environment's."""
    policy = _POLICY.get()
    if policy is not None:
        return policy
    env = (os.environ.get(ENV_PUBLIC, ""), os.environ.get(ENV_SIGNING, ""))
    if env == ("", ""):
        return Policy()
    if env not in _ENV_CACHE:
        _ENV_CACHE[env] = make_policy()
    return _ENV_CACHE[env]


@contextlib.contextmanager
def using(policy: Policy | None) -> Iterator[None]:
    """Run the enclosed reads and updates under ``policy`` (``None``: leave the current one)."""
    if policy is None:
        yield
        return
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def require_signer(path) -> None:
    """Refuse an update a pinned device could not sign (before anything is written)."""
    policy = current()
    if policy.active and policy.signer is None:
        raise SignatureError(
            f"{path}: this device only accepts signed bundles (public key configured), so its updates must be "
            "signed: give a signing key (signing_key=..., --signing-key, EDGECL_SIGNING_KEY) that it trusts"
        )
    if policy.active and key_id(policy.signer.public_key()) not in {key_id(k) for k in policy.trusted}:
        raise SignatureError(f"{path}: the signing key is not one of the trusted public keys; its updates would be refused")


# ----------------------------------------------------------------- manifest
def _manifest_message(m: dict) -> bytes:
    body = {k: v for k, v in m.items() if k not in ("checksum", FIELD)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return b"edgecl-manifest\0" + canonical.encode("ascii")


def sign_manifest(m: dict, key) -> dict:
    """``m`` with a ``signature`` field by ``key`` (call before sealing: the checksum covers it)."""
    sig = key.sign(_manifest_message(m))
    entry = {"alg": ALG, "key_id": key_id(key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}
    return {**{k: v for k, v in m.items() if k != FIELD}, FIELD: entry}


def on_seal(m: dict) -> dict:
    """What every manifest writer does before sealing: sign with the current signer, else drop a signature
    that the new content would no longer match."""
    signer = current().signer
    if signer is not None:
        return sign_manifest(m, signer)
    return {k: v for k, v in m.items() if k != FIELD}


def verify_entry(entry, message: bytes, where: str, policy: Policy) -> None:
    if not isinstance(entry, dict) or entry.get("alg", ALG) != ALG or not isinstance(entry.get("sig"), str):
        raise SignatureError(f"{where} is not signed; this device only accepts bundles signed by its trusted keys")
    keys = {key_id(k): k for k in policy.trusted}
    key = keys.get(entry.get("key_id"))
    if key is None:
        raise SignatureError(f"{where} is signed by key {entry.get('key_id')!r}, which this device does not trust")
    try:
        key.verify(base64.b64decode(entry["sig"], validate=True), message)
    except Exception:  # noqa: BLE001 - InvalidSignature, or a malformed base64 value
        raise SignatureError(f"{where}: the signature does not match (modified after signing)") from None


def verify_manifest(m: dict, where: str) -> None:
    """Under an active policy, refuse a manifest that is not signed by a trusted key."""
    policy = current()
    if policy.active:
        verify_entry(m.get(FIELD), _manifest_message(m), where, policy)


# ------------------------------------------------------------------ records
def record_message(prev_digest: str, header: dict, body: bytes) -> bytes:
    """What a record's ``sig`` signs: the previous digest, the header without ``sig``, the embeddings."""
    h = json.dumps({k: v for k, v in header.items() if k != RECORD_FIELD}, ensure_ascii=True, sort_keys=True)
    return b"edgecl-record\0" + bytes.fromhex(prev_digest) + hashlib.sha256(h.encode("ascii") + b"\n" + body).digest()


def sign_record(prev_digest: str, header: dict, body: bytes) -> dict | None:
    """The ``sig`` header entry by the current signer, or None without one."""
    signer = current().signer
    if signer is None:
        return None
    sig = signer.sign(record_message(prev_digest, header, body))
    return {"key_id": key_id(signer.public_key()), "sig": base64.b64encode(sig).decode("ascii")}
