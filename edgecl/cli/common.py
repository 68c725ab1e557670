"""What every ``edgecl`` command shares: the click group, progress bars, error reporting."""

from __future__ import annotations

import sys

import click

from .. import __version__


def progress_bar(label: str):
    """A click progress bar wrapper for an iterable with a length, on stderr."""

    def wrap(iterable):
        with click.progressbar(iterable, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar

    return wrap


def fail(exc: Exception) -> None:
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


def load_bundle(path: str, device: str):
    """Open a bundle for a command; ``--threads`` (``threads_option``) is honoured when the command has it."""
    from runtime import Bundle, EdgeclRuntimeError

    ctx = click.get_current_context(silent=True)
    threads = ctx.meta.get(THREADS_KEY) if ctx is not None else None
    try:
        return Bundle.load(path, device=device, threads=threads)
    except EdgeclRuntimeError as exc:
        fail(exc)


THREADS_KEY = "edgecl.threads"

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, expose_value=False,
    callback=lambda ctx, param, value: ctx.meta.__setitem__(THREADS_KEY, value),
    help="onnxruntime intra-op threads (default: one per physical core).",
)

device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Execution provider: auto picks CUDA when onnxruntime has it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecl")
def main():
    """Continual learning with pre-trained models, exported to the edge."""
