"""``edgecl serve``: a web page and JSON API to predict with and teach a bundle (the ``[serve]`` extra).

``create_app(ServedBundle(path))`` is the WSGI app (Flask); ``make_server`` binds
it with waitress. The API is documented in docs/serve-api.md.
"""

from __future__ import annotations

from .app import TOKEN_ENV, create_app, is_loopback
from .state import ServedBundle


def make_server(bundle_path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                device: str = "auto", threads: int | None = None, max_body: int | None = None):
    """A waitress server for the bundle (``.run()`` serves, ``.close()`` stops, ``.effective_port``).

    Any address but loopback needs a ``token`` (``ValueError`` otherwise).
    """
    from waitress.server import create_server

    if not token and not is_loopback(host):
        raise ValueError(f"serving on {host} (not loopback) needs a token: --token TOKEN or ${TOKEN_ENV}")
    served = ServedBundle(bundle_path, device=device, threads=threads)
    kwargs = {} if max_body is None else {"max_body": max_body}
    app = create_app(served, token=token, **kwargs)
    return create_server(app, host=host, port=port, threads=8, ident="edgecl")


__all__ = ["ServedBundle", "TOKEN_ENV", "create_app", "is_loopback", "make_server"]
