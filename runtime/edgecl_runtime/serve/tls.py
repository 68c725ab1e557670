"""HTTPS for ``edgecl serve --tls auto``: a self-signed certificate kept beside the server's state.

The certificate and its key live in ``BUNDLE/.serve-tls/`` (the key readable by its owner only) and
are reused while they are valid for another week and name every address the server answers to,
so a phone that accepted the certificate once keeps trusting it. Its SHA-256 fingerprint is printed
with the URL: the user compares it with what the phone's browser shows before accepting.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from ..errors import MissingDependencyError

TLS_DIR = ".serve-tls"
VALID_DAYS = 825  # the longest validity Apple platforms accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=7)
INSTALL = "pip install 'edgecl-runtime[serve]'"


def _x509():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise MissingDependencyError(f"--tls auto needs the cryptography package: {INSTALL}") from exc
    return x509, hashes, serialization, ec


def server_names(bind: str, extra_hosts=()) -> tuple[set[str], set[str]]:
    """DNS names and IP addresses the certificate must name for a server bound to ``bind``."""
    hostname = socket.gethostname().lower()
    dns = {"localhost", hostname, f"{hostname}.local", *extra_hosts}
    ips = {"127.0.0.1", "::1"}
    if bind in ("", "0.0.0.0", "::"):
        try:
            ips |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    else:
        dns.add(bind)
    for name in list(dns):
        try:
            ips.add(str(ipaddress.ip_address(name)))
            dns.discard(name)
        except ValueError:
            pass
    return {d for d in dns if d}, {str(ipaddress.ip_address(i.split("%")[0])) for i in ips}


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate (DER), as browsers show it: ``AB:CD:...``."""
    x509, hashes, _, _ = _x509()
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def _covers(cert_pem: bytes, dns: set[str], ips: set[str]) -> bool:
    x509, _, _, _ = _x509()
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return dns <= have_dns and ips <= have_ips


def make_certificate(dns: set[str], ips: set[str]) -> tuple[bytes, bytes]:
    """A self-signed P-256 certificate (PEM) for the names and addresses, and its private key (PEM)."""
    x509, hashes, serialization, ec = _x509()
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgecl serve on {socket.gethostname()}")])
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(d) for d in sorted(dns)] + [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def auto_certificate(bundle_dir: Path, bind: str, extra_hosts=()) -> tuple[Path, Path]:
    """``(cert, key)`` paths in ``BUNDLE/.serve-tls/``: reused when still valid for the server's names, else made anew."""
    folder = Path(bundle_dir) / TLS_DIR
    cert, key = folder / "cert.pem", folder / "key.pem"
    dns, ips = server_names(bind, extra_hosts)
    if cert.is_file() and key.is_file() and _covers(cert.read_bytes(), dns, ips):
        return cert, key
    folder.mkdir(mode=0o700, exist_ok=True)
    cert_pem, key_pem = make_certificate(dns, ips)
    _write_private(key, key_pem, 0o600)
    _write_private(cert, cert_pem, 0o644)
    return cert, key
