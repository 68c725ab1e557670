"""``edgecl cache``: what edgecl keeps under $EDGECL_CACHE_DIR, by section, and clearing it."""

from __future__ import annotations

import click

from edgecl_runtime.cli.common import emit_json, fail, json_option


@click.group()
def cache():
    """See and clear what edgecl caches: pre-trained embedded backbones, rendered
    data sets and image embeddings.

    The cache lives in $EDGECL_CACHE_DIR, else $XDG_CACHE_HOME/edgecl, else
    ~/.cache/edgecl. Everything in it is made again on next use, so clearing
    loses only time; runs, bundles and the embedded ViT's committed weights are
    never in it.
    """


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _row(s) -> dict:
    return {"section": s.name, "path": str(s.path), "entries": s.entries, "bytes": s.bytes, "holds": s.holds}


@cache.command()
@json_option
def info(as_json):
    """List the cache's sections with their entries, size and what they hold.

    --json prints {"cache_dir", "bytes", "sections": [{"section", "path",
    "entries", "bytes", "holds"}]}.
    """
    from ..paths import cache_dir, cache_usage

    sections = cache_usage()
    total = sum(s.bytes for s in sections)
    if as_json:
        return emit_json({"cache_dir": str(cache_dir()), "bytes": total, "sections": [_row(s) for s in sections]})
    click.echo(f"{cache_dir()}: {_mb(total)}")
    width = max([len("section"), *(len(s.name) for s in sections)])
    click.echo(f"{'section'.ljust(width)}  {'entries':>7}  {'size':>12}  holds")
    for s in sections:
        click.echo(f"{s.name.ljust(width)}  {s.entries:>7}  {_mb(s.bytes):>12}  {s.holds}")


@cache.command()
@click.argument("sections", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Clear every section.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
def clear(sections, everything, dry_run, as_json):
    """Remove the entries of SECTIONS (see `edgecl cache info`), or of all with --all.

    Every section named is checked before anything is removed. A run that is
    reading an entry keeps what it opened; a writer's temporary files are kept
    unless older than an hour (left by a crash). --json prints {"dry_run",
    "removed": [{"section", "path", "entries", "bytes", "holds"}]}.
    """
    from ..paths import clear_cache

    if bool(sections) == everything:
        raise click.UsageError("name the sections to clear (see `edgecl cache info`), or give --all")
    try:
        removed = clear_cache(None if everything else list(sections), dry_run=dry_run)
    except ValueError as exc:
        fail(exc)
    if as_json:
        return emit_json({"dry_run": dry_run, "removed": [_row(s) for s in removed]})
    verb = "would remove" if dry_run else "removed"
    for s in removed:
        click.echo(f"{s.name}: {verb} {s.entries} entries, {_mb(s.bytes)}")
