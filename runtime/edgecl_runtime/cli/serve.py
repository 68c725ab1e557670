"""``edgecl serve``: the web page and JSON API of a bundle (needs the ``[serve]`` extra)."""

from __future__ import annotations

import os

import click

from .common import device_option, fail, main, threads_option

SERVE_INSTALL = "pip install 'edgecl-runtime[serve]'"


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--token", envvar="EDGECL_SERVE_TOKEN", default=None,
              help="Require this token on every request ('Authorization: Bearer TOKEN' or ?token=TOKEN); "
                   "also read from $EDGECL_SERVE_TOKEN.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest request body accepted (MiB); larger ones get 413.")
@device_option
@threads_option
def serve(bundle, host, port, token, max_upload_mb, device):
    """Serve BUNDLE as a web page: camera / upload, live top-k, teach, remove, history, rollback, download.

    The page and its JSON API (docs/serve-api.md) work with no network: every
    asset is packaged. Many tabs can be open at once; updates go through the
    bundle's journal. Teaching an existing class name extends that class.
    """
    try:
        from edgecl_runtime.serve import make_server
    except ImportError as exc:
        raise click.ClickException(f"`edgecl serve` needs {exc.name or 'its web dependencies'}: {SERVE_INSTALL}")
    from edgecl_runtime import EdgeclRuntimeError

    ctx = click.get_current_context()
    try:
        server = make_server(bundle, host, port, token=token, device=device,
                             threads=ctx.meta.get("edgecl.threads"), max_body=max_upload_mb << 20)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    except EdgeclRuntimeError as exc:
        fail(exc)
    shown = f"[{host}]" if ":" in host else host
    query = "?token=…" if token else ""
    click.echo(f"serving {os.fspath(bundle)} on http://{shown}:{server.effective_port}/{query}  (Ctrl-C stops)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
