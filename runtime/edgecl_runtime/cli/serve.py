"""``edgecl serve``: the web page and JSON API of a bundle (needs the ``[serve]`` extra)."""

from __future__ import annotations

import os

import click

from .common import device_option, fail, main, threads_option

SERVE_INSTALL = "pip install 'edgecl-runtime[serve]'"


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0: every interface, e.g. for a phone on the local network; use --tls then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--token", envvar="EDGECL_SERVE_TOKEN", default=None,
              help="The secret every request must carry (the page gets it from the printed ?token= URL). "
                   "Default: a random one per start; also read from $EDGECL_SERVE_TOKEN.")
@click.option("--no-token", is_flag=True,
              help="Serve without a token (loopback only): then any program of any user of this machine can use "
                   "the bundle. Other web sites stay refused either way.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer to this Host name (repeatable), e.g. the name a reverse proxy or a phone uses. "
                   "Default: loopback names, the bound address, this machine's name when bound to all addresses.")
@click.option("--tls", type=click.Choice(["auto"]), default=None,
              help="auto: HTTPS with a self-signed certificate kept in BUNDLE/.serve-tls/ (its SHA-256 fingerprint "
                   "is printed: compare it with what the phone shows). Browsers give the camera only to HTTPS pages "
                   "(or localhost).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="HTTPS with this certificate (PEM); needs --key.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="The private key (PEM) of --cert.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest request body accepted (MiB); larger ones get 413.")
@device_option
@threads_option
def serve(bundle, host, port, token, no_token, allow_hosts, tls, cert, key, max_upload_mb, device):
    """Serve BUNDLE as a web page: camera / upload, live top-k, teach, remove, history, rollback, download.

    Open the printed URL: it carries the server's token (?token=...), which the
    page keeps; requests without it get 401. Only this server's own page can
    change the bundle: requests from other web sites (forms, scripts, frames, a
    re-bound host name) are refused (threat model: docs/serve-api.md).

    The page and its JSON API work with no network: every asset is packaged.
    Many tabs can be open at once; updates go through the bundle's journal.
    Teaching an existing class name extends that class.
    """
    try:
        from edgecl_runtime.serve import make_server
    except ImportError as exc:
        raise click.ClickException(f"`edgecl serve` needs {exc.name or 'its web dependencies'}: {SERVE_INSTALL}")
    from edgecl_runtime import EdgeclRuntimeError

    tls_arg = _tls_arg(tls, cert, key)
    ctx = click.get_current_context()
    try:
        server = make_server(bundle, host, port, token=token or None, device=device,
                             threads=ctx.meta.get("edgecl.threads"), max_body=max_upload_mb << 20,
                             no_token=no_token, allow_hosts=allow_hosts, tls=tls_arg)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc))
    except EdgeclRuntimeError as exc:
        fail(exc)
    _announce(server, bundle, shown_token=token is None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _tls_arg(tls, cert, key):
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    if tls and cert:
        raise click.UsageError("--tls auto and --cert/--key exclude each other")
    return (cert, key) if cert else tls


def _announce(server, bundle, shown_token: bool) -> None:
    """The URL to open (with the token unless the user chose it), the certificate's fingerprint, a hint for LAN use."""
    from edgecl_runtime.serve import is_loopback

    url = server.url if shown_token or not server.guard.token else f"{server.base_url}/?token=…"
    click.echo(f"serving {os.fspath(bundle)} on {url}  (Ctrl-C stops)")
    if server.fingerprint:
        click.echo(f"certificate SHA-256 fingerprint: {server.fingerprint}")
    elif not is_loopback(server.host):
        click.echo("note: plain HTTP on the network: phones give the camera only to HTTPS pages, and the token "
                   "travels in clear text; add --tls auto", err=True)
