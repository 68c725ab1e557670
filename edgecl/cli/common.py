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
    from runtime import Bundle, EdgeclRuntimeError

    try:
        return Bundle.load(path, device=device)
    except EdgeclRuntimeError as exc:
        fail(exc)


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Execution provider: auto picks CUDA when onnxruntime has it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecl")
def main():
    """Continual learning with pre-trained models, exported to the edge."""
