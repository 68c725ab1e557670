"""What keeps other web sites out of ``edgecl serve`` (threat model: docs/serve-api.md, "Security").

Checked on every request, before routing, in this order:

1. ``Host`` is one of the server's own names (loopback names, the bound address, ``--allow-host``),
   else 403: a page whose hostname was re-bound to this machine (DNS rebinding) is refused.
2. A request another site's page made (``Sec-Fetch-Site: cross-site`` or ``same-site``; without
   fetch metadata, a foreign ``Origin``/``Referer``) is refused (403), except a top-level navigation
   to the page itself.
3. The token, when the server has one: ``Authorization: Bearer``, ``?token=`` or the cookie that
   opening ``/?token=...`` sets; else 401.
4. Writes (any method but GET/HEAD/OPTIONS): the ``Origin`` (or the ``Referer``'s origin when
   ``Origin`` is absent) must be the server's own, and the request must carry a secret a form
   cannot send: ``Authorization: Bearer TOKEN``, or the ``X-XSRFToken`` header echoing the
   ``_xsrf`` cookie the page was given; else 403.

Every response carries a Content-Security-Policy that allows only the page's own scripts and
no framing, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``, ``Cross-Origin-Resource-Policy``,
and ``Cache-Control: no-store`` on the API and the bundle's files.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Flask, g, request

from .errors import error_response

TOKEN_COOKIE = "edgecl_token"
XSRF_COOKIE = "_xsrf"
XSRF_HEADER = "X-XSRFToken"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",  # onnxruntime-web compiles its WebAssembly
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self' data: blob:",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


@dataclass(frozen=True)
class Guard:
    """The server's secrets and own names; ``install`` applies them to an app."""

    token: str | None = None
    hosts: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})
    any_ip: bool = False  # bound to a wildcard address: any IP literal is one of ours (IPs cannot be re-bound)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @classmethod
    def for_address(cls, bind: str, token: str | None = None, allow_hosts=()) -> "Guard":
        """Loopback names, the bound address (and this machine's names when bound to all addresses), ``allow_hosts``."""
        names = {"localhost", "127.0.0.1", "::1", host_name(f"[{bind}]" if ":" in bind else bind)}
        wildcard = bind in WILDCARDS
        if wildcard or not is_loopback(bind):
            hostname = socket.gethostname().lower()
            names |= {hostname, f"{hostname}.local"}
        names |= {host_name(h) for h in allow_hosts}
        return cls(token=token or None, hosts=frozenset(n for n in names if n), any_ip=wildcard)

    @property
    def xsrf(self) -> str:
        return hmac.new(self.secret, b"xsrf", hashlib.sha256).hexdigest()

    def host_ok(self, header: str) -> bool:
        name = host_name(header)
        ip = _ip(name)
        return name in self.hosts or (ip is not None and (ip.is_loopback or self.any_ip))

    def token_given(self) -> bool:
        return self.token is not None and any(
            hmac.compare_digest(t.encode(), self.token.encode()) for t in _offered_tokens())

    def secret_given(self) -> bool:
        """A write's proof that it comes from the page or a client holding the token (never from a form)."""
        bearer = _bearer()
        if self.token is not None and bearer and hmac.compare_digest(bearer.encode(), self.token.encode()):
            return True
        given = request.headers.get(XSRF_HEADER, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.xsrf.encode())


def _bearer() -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else ""


def _offered_tokens() -> list[str]:
    return [t for t in (_bearer(), request.args.get("token", ""), request.cookies.get(TOKEN_COOKIE, "")) if t]


def _own_origin() -> str:
    return f"{request.scheme}://{request.host}".lower()


def _request_origin() -> str | None:
    """The ``Origin`` header, else the origin of the ``Referer``; None when the client sent neither."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin.lower()
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower()
    return None


def _cross_site_request() -> bool:
    """Another site's page made this request (opening the page itself from a link is fine).

    Fetch metadata says so where the browser sends it (secure contexts, loopback); elsewhere (plain HTTP
    under a network name) a foreign ``Origin`` or ``Referer`` does: the page itself sends no Referer.
    """
    opens_page = request.method == "GET" and request.path == "/"
    site = request.headers.get("Sec-Fetch-Site")
    if site is None:
        origin = _request_origin()
        return not opens_page and origin is not None and origin != _own_origin()
    navigation = request.headers.get("Sec-Fetch-Mode") == "navigate" and request.headers.get("Sec-Fetch-Dest") == "document"
    return site in ("cross-site", "same-site") and not (opens_page and navigation)


def install(app: Flask, guard: Guard) -> None:
    """Check every request against ``guard`` before routing; add the security headers to every response."""

    @app.before_request
    def check():
        if not guard.host_ok(request.host):
            return error_response(403, f"Host {request.host!r} is not a name of this server: open it as "
                                f"http://localhost:PORT/ or start it with --allow-host NAME")
        if _cross_site_request():
            return error_response(403, "cross-site request refused: open the page itself")
        if guard.token is not None and not guard.token_given():
            return error_response(401, "missing or wrong token: open the page with the URL `edgecl serve` printed "
                                "(…/?token=TOKEN) or send 'Authorization: Bearer TOKEN'")
        if request.method not in SAFE_METHODS and (refused := _check_write(guard)) is not None:
            return refused
        g.edgecl_trusted = True  # the cookies below go only to a client that passed the checks
        return None

    @app.after_request
    def headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path.startswith(("/api/", "/bundle/")):
            response.headers["Cache-Control"] = "no-store"
        if not g.get("edgecl_trusted"):
            return response
        secure = request.scheme == "https"
        if request.cookies.get(XSRF_COOKIE) != guard.xsrf:
            response.set_cookie(XSRF_COOKIE, guard.xsrf, samesite="Strict", secure=secure)
        if guard.token is not None and request.args.get("token") and request.cookies.get(TOKEN_COOKIE) != guard.token:
            response.set_cookie(TOKEN_COOKIE, guard.token, httponly=True, samesite="Strict", secure=secure)
        return response


def _check_write(guard: Guard):
    origin = _request_origin()
    if origin is not None and origin != _own_origin():
        return error_response(403, f"cross-origin write refused: the request comes from {origin}, not from {_own_origin()}")
    if not guard.secret_given():
        return error_response(403, f"write refused: send 'Authorization: Bearer TOKEN', or the {XSRF_HEADER} header "
                            f"with the value of the {XSRF_COOKIE} cookie (the page does this)")
    return None
