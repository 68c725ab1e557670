"""Bundle-store commands (runtime only): history, rollback, compact, merge, diff, remove-class.

They act on the bundle's journal (``edgecl_runtime.store``); none loads the backbone.
"""

from __future__ import annotations

import json

import click

from .common import fail, main


def _run(fn, *args, **kwargs):
    from edgecl_runtime import EdgeclRuntimeError

    try:
        return fn(*args, **kwargs)
    except EdgeclRuntimeError as exc:
        fail(exc)


def load_trusted(path: str, device: str):
    """``Bundle.load(..., trust_modified=True)`` for ``--trust-modified``: the warning goes to stderr."""
    import logging
    import warnings

    from edgecl_runtime import Bundle

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the logger already reports it
        return _run(Bundle.load, path, device=device, trust_modified=True)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
def history(bundle, as_json):
    """List BUNDLE's on-device updates (the journal) and events (rollbacks, compactions, trust overrides)."""
    from edgecl_runtime import store

    h = _run(store.history, bundle)
    if as_json:
        click.echo(json.dumps(h, indent=2))
        return
    click.echo(f"bundle {h['bundle_id']} (format {h['format_version']}): {h['classes']} classes after update {h['seq']}")
    for e in h["legacy_history"]:
        click.echo(f"   -  {e.get('time', '?')}  {e.get('event')} {e.get('class')!r} (format-1 history, in the base)")
    click.echo(f"{h['base']['seq']:>4}  base ({h['base']['classes']} classes)")
    for u in h["updates"]:
        what = f"{u['op']} {u['class']!r}" + (f" ({u['examples']} examples)" if "examples" in u else "")
        tags = ("" if u["committed"] else "  [in journal, replayed]") + (
            f"  [merged from {u['merged_from']}]" if u.get("merged_from") else "")
        click.echo(f"{u['seq']:>4}  {u['time']}  {what}{tags}")
    if h["discarded_bytes"]:
        click.echo(f"      ({h['discarded_bytes']} bytes of an incomplete last record are ignored)")
    for e in h["events"]:
        click.echo(f"   *  {e.get('time', '?')}  {e.get('event')} " + json.dumps({k: v for k, v in e.items() if k not in ("time", "event")}))


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--to", "to", type=int, required=True, help="Update number to return to (see `edgecl history`; the base is its first number).")
def rollback(bundle, to):
    """Restore BUNDLE to its state after update --to, replaying the journal from the base."""
    from edgecl_runtime import store

    st = _run(store.rollback, bundle, to)
    click.echo(f"rolled back to update {st.seq}: {len(st.classes)} classes")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--trust-modified", is_flag=True, help="Accept files whose checksum changed, and a corrupt journal (logged).")
def compact(bundle, trust_modified):
    """Fold BUNDLE's journal into a new base (rollback cannot go back past it)."""
    from edgecl_runtime import store
    from edgecl_runtime.store import bundle_bytes

    before = bundle_bytes(bundle)
    st = _run(store.compact, bundle, trust_modified=trust_modified)
    click.echo(f"compacted the journal into a new base at update {st.seq}: {bundle_bytes(bundle)} bytes (was {before})")


@main.command()
@click.argument("base", type=click.Path())
@click.argument("devices", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True,
              help="Directory to write the merged bundle to (absent or empty; written completely or not at all). "
                   "BASE itself merges in place (each device committed as it is merged).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge(base, devices, out, as_json):
    """Merge the on-device updates of DEVICES (one or many bundles) into a copy of BASE, written to OUT.

    Every bundle must come from BASE's export (a foreign one is refused before
    anything is written). The result equals one device having seen every
    device's examples, in the order given (see docs/fleet.md); inputs are read
    one at a time, so a fleet of thousands of devices merges in linear time and memory.
    """
    from edgecl_runtime import store

    before = _run(store.read_state, base, verify="state").seq
    st = _run(store.merge, base, list(devices), out)
    report = {"out": out, "devices": len(devices), "updates_merged": st.seq - before, "classes": len(st.classes)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"merged {st.seq - before} update(s) from {len(devices)} bundle(s) into {out}: {len(st.classes)} classes")


@main.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(a, b, as_json):
    """List the classes added, removed and changed from bundle A to bundle B.

    Changed: in both, with a different example count or per-class statistics
    (prototype; mean and scatter; ridge feature sums) beyond float rounding.
    """
    from edgecl_runtime import store

    d = _run(store.diff, a, b)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{a} ({d['classes'][0]} classes) -> {b} ({d['classes'][1]} classes)"
               + ("" if d["same_export"] else "  [different exports]"))
    for sign, key in (("+", "added"), ("-", "removed")):
        for c in d[key]:
            click.echo(f"{sign} {c['class']!r} ({c['examples']} examples)")
    for c in d["changed"]:
        click.echo(f"~ {c['class']!r} ({c['examples'][0]} -> {c['examples'][1]} examples, "
                   f"statistics differ by up to {c['max_abs_difference']:.3g})")
    click.echo(f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed, "
               f"{d['unchanged']} unchanged")


@main.command(name="remove-class")
@click.argument("bundle", type=click.Path())
@click.argument("name")
def remove_class(bundle, name):
    """Forget class NAME on the device (journaled; `edgecl rollback` undoes it).

    For a class added on the device since the base (the export or the last
    `compact`), removal is the exact inverse of its additions: every other
    class scores as if it had never been added (also for ridge heads, whose
    shared statistics lose its examples). For a class of the base (trained,
    or folded by `compact`), its row goes and its journaled examples leave the
    shared statistics; its base examples are not known to the device and stay
    in a ridge head's Gram matrix (the other classes keep the fit that saw them).
    """
    from edgecl_runtime import store

    st = _run(store.remove_class, bundle, name)
    click.echo(f"removed class {name!r}; bundle now has {len(st.classes)} classes")
