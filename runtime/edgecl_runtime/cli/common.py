"""What every ``edgecl`` command shares: the click group, plugins, progress bars, error reporting."""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import entry_points

import click

from .. import __version__

COMMANDS_GROUP = "edgecl.commands"  # entry points: click commands of the training distribution
PLUGINS_GROUP = "edgecl.plugins"  # entry points: functions the device verbs call when training is installed
TRAINING_VERBS = ("train", "export", "demo", "learners", "backbones", "pretrain", "data", "cache")
TRAINING_INSTALL = "pip install edgecl (the training distribution; it brings torch and timm)"


VERBOSITY_KEY = "edgecl.verbosity"  # ctx.meta: -1 quiet, 0 default, 1 verbose
LOGGERS = ("edgecl", "edgecl_runtime", "edgecl_export")
log = logging.getLogger("edgecl.cli")


def verbosity() -> int:
    """-1 with ``-q``, 1 with ``-v``, else 0 (also outside a command)."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().meta.get(VERBOSITY_KEY, 0) if ctx is not None else 0


class _ClickHandler(logging.Handler):
    """Log records as lines on the current stderr (click's, so that CliRunner captures them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


def configure_logging(level: int) -> None:
    """Send the edgecl loggers' records at ``level`` and above to stderr (one handler, replaced on each call)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _ClickHandler)]:
            logger.removeHandler(h)
        handler = _ClickHandler()
        handler.setFormatter(logging.Formatter("%(message)s" if level > logging.DEBUG else "%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


def progress_bar(label: str):
    """A click progress bar wrapper for an iterable with a length, on stderr; none with ``-q``."""

    def wrap(iterable):
        if verbosity() < 0:
            yield from iterable
            return
        with click.progressbar(iterable, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar

    return wrap


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as one JSON object on stdout (and nothing else there).")


def emit_json(obj) -> None:
    """One JSON document on stdout (NaN and infinities become null)."""
    click.echo(json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, default=str))


def _finite(obj):
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays
        obj = obj.tolist()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def fail(exc: Exception) -> None:
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


def _entry_point(group: str, name: str):
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    return found[0] if found else None


def _missing_training(name: str, why: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   add_help_option=False, help=f"(needs the training distribution: {why})")
    def stub():
        raise click.ClickException(f"`edgecl {name}` needs the training distribution: {why}")

    return stub


def load_plugin(name: str, purpose: str):
    """The training distribution's function ``name`` (entry point in ``edgecl.plugins``), or a clear error."""
    ep = _entry_point(PLUGINS_GROUP, name)
    if ep is None:
        raise click.ClickException(f"{purpose} needs the training distribution: {TRAINING_INSTALL}")
    try:
        return ep.load()
    except ImportError as exc:
        raise click.ClickException(f"{purpose} needs {exc.name or 'a training dependency'}: {exc}") from exc


def describe_error(exc: BaseException) -> str:
    """One line for any failure a command can meet (the runtime's errors, the OS's, memory, nesting)."""
    from edgecl_runtime import EdgeclRuntimeError

    if isinstance(exc, EdgeclRuntimeError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        from edgecl_runtime.storage import storage_error

        what = f"access {exc.filename}" if exc.filename else "complete the command"
        return f"StorageError: {storage_error(exc, what, unchanged=False)}"
    if isinstance(exc, MemoryError):
        return "out of memory: the input is too large for this device (see edgecl_runtime.limits for the budgets)"
    if isinstance(exc, RecursionError):
        return "input nested too deeply to process"
    return f"internal error ({type(exc).__name__}: {exc}); EDGECL_DEBUG=1 shows the traceback"


class EdgeclGroup(click.Group):
    """A click group whose training verbs come from the ``edgecl.commands`` entry points, and that reports
    every exception of a command as a one-line error with exit code 1 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the command line's last line of defence
            if os.environ.get("EDGECL_DEBUG"):
                raise
            raise click.ClickException(describe_error(exc)) from exc

    def list_commands(self, ctx):
        plugins = {ep.name for ep in entry_points(group=COMMANDS_GROUP)}
        return sorted(set(super().list_commands(ctx)) | plugins | set(TRAINING_VERBS))

    def get_command(self, ctx, name):
        own = super().get_command(ctx, name)
        if own is not None:
            return own
        ep = _entry_point(COMMANDS_GROUP, name)
        if ep is None:
            return _missing_training(name, TRAINING_INSTALL) if name in TRAINING_VERBS else None
        try:
            return ep.load()
        except ImportError as exc:
            missing = exc.name or "a training dependency"
            return _missing_training(name, f"{missing} is not importable ({exc}); pip install torch==2.13.0 edgecl")


def load_bundle(path: str, device: str):
    """Open a bundle for a command; ``--threads`` (``threads_option``) is honoured when the command has it."""
    from edgecl_runtime import Bundle, EdgeclRuntimeError

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


@click.group(cls=EdgeclGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecl")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Trust only bundles and updates signed by this Ed25519 key (PEM, from `edgecl keygen`); "
                   "repeatable. Default: env EDGECL_PUBLIC_KEY.")
@click.option("--signing-key", type=click.Path(dir_okay=False),
              help="Sign this command's updates with this Ed25519 private key (needed to update a bundle when "
                   "--public-key is set). Default: env EDGECL_SIGNING_KEY.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results on stdout: no progress bars or log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also show debug log lines (on stderr).")
@click.pass_context
def main(ctx, public_keys, signing_key, quiet, verbose):
    """Continual learning with pre-trained models, exported to the edge.

    Device verbs (predict, add-class, remove-class, eval, info, history,
    rollback, compact, merge, diff, bench, sign, keygen) need only the runtime; training verbs
    (train, export, demo, ...) come with the training distribution `edgecl`.

    Results go to stdout (as JSON with --json, where a verb reports); progress
    bars and log lines go to stderr (-q hides them, -v adds debug lines).
    Every failure is reported as one line on stderr with exit code 1
    (EDGECL_DEBUG=1 shows the traceback); a failed update leaves the bundle unchanged.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v exclude each other")
    ctx.meta[VERBOSITY_KEY] = -1 if quiet else 1 if verbose else 0
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if public_keys or signing_key:
        from edgecl_runtime import signing

        policy = signing.make_policy(list(public_keys) or None, signing_key)
        ctx.with_resource(signing.using(policy))


def unknown_option(ctx, param, value):
    """``--unknown``: None, "auto" or a float."""
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected 'auto' or a number, got {value!r}") from None
