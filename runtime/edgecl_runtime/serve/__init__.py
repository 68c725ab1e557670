"""``edgecl serve``: a web page and JSON API to predict with and teach a bundle (the ``[serve]`` extra).

``create_app(ServedBundle(path))`` is the WSGI app (Flask); ``make_server`` binds it with cheroot
(HTTP or HTTPS) behind the guard of ``security``. The API is documented in docs/serve-api.md and
``/api/openapi.json``.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from .app import TOKEN_ENV, create_app
from .security import WILDCARDS, Guard, is_loopback
from .state import ServedBundle


class Server:
    """A bound server: ``run()`` serves until ``close()``; ``url`` opens the page (with its token)."""

    def __init__(self, wsgi_server, host: str, guard: Guard, tls: tuple[Path, Path] | None):
        self._server = wsgi_server
        self.host, self.guard, self.tls = host, guard, tls
        self.fingerprint = None
        if tls is not None:
            from .tls import fingerprint

            self.fingerprint = fingerprint(Path(tls[0]).read_bytes())

    @property
    def effective_port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def base_url(self) -> str:
        host = socket.gethostname().lower() if self.host in WILDCARDS else self.host
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.effective_port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/" + (f"?token={self.guard.token}" if self.guard.token else "")

    def run(self) -> None:
        self._server.serve()

    def close(self) -> None:
        self._server.stop()


def make_server(bundle_path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                device: str = "auto", threads: int | None = None, max_body: int | None = None, *,
                no_token: bool = False, allow_hosts=(), tls: str | tuple | None = None) -> Server:
    """A bound server for the bundle (``.run()`` serves, ``.close()`` stops, ``.url``, ``.effective_port``).

    ``token``: the secret every request must carry; None makes a random one, unless ``no_token``
    (allowed on loopback only). ``allow_hosts``: more ``Host`` names to answer to. ``tls``:
    ``"auto"`` (a self-signed certificate in ``BUNDLE/.serve-tls/``) or ``(cert_file, key_file)``.
    """
    from cheroot import wsgi

    if no_token and token:
        raise ValueError("give a token or no_token, not both")
    if no_token and not is_loopback(host):
        raise ValueError(f"serving on {host} (not loopback) needs a token: leave it to the server, or --token TOKEN")
    guard = Guard.for_address(host, None if no_token else token or secrets.token_urlsafe(24), allow_hosts)
    served = ServedBundle(bundle_path, device=device, threads=threads)
    kwargs = {} if max_body is None else {"max_body": max_body}
    app = create_app(served, guard=guard, **kwargs)
    server = wsgi.Server((host, port), app, numthreads=8, server_name="edgecl")
    files = _tls_files(served.path, host, tls, allow_hosts)
    if files is not None:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(str(files[0]), str(files[1]))
    server.prepare()
    return Server(server, host, guard, files)


def _tls_files(bundle_dir: Path, host: str, tls, allow_hosts) -> tuple[Path, Path] | None:
    if tls is None:
        return None
    if tls == "auto":
        from .tls import auto_certificate

        return auto_certificate(bundle_dir, host, allow_hosts)
    cert, key = (Path(p) for p in tls)
    for p in (cert, key):
        if not p.is_file():
            raise ValueError(f"TLS file {p} does not exist")
    return cert, key


__all__ = ["Guard", "ServedBundle", "Server", "TOKEN_ENV", "create_app", "is_loopback", "make_server"]
