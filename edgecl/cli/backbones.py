"""``edgecl backbones``: which backbones exist by name, whether their weights are here, where they come from; with
``--probe DATA`` how well the installed ones suit the user's data."""

from __future__ import annotations

import click

from edgecl_runtime.cli.common import emit_json, fail, json_option, log

PROBE_ONLY = ("per_class", "names", "sizes", "clip")  # options that mean something with --probe only


@click.command()
@click.option("--probe", "data", metavar="DATA", default=None,
              help="Rank the installed backbones on DATA (an image folder or any `edgecl train --dataset` spec) "
                   "with a quick nearest-class-mean and ridge probe, and recommend one.")
@click.option("--per-class", type=click.IntRange(min=1), default=10, show_default=True,
              help="--probe: at most this many images per class of each split (for speed).")
@click.option("--backbone", "names", multiple=True, metavar="NAME[@SIZE]",
              help="--probe: probe these backbones (repeatable; default: every installed image backbone).")
@click.option("--img-size", "sizes", type=click.IntRange(min=16), multiple=True,
              help="--probe: input sizes for the ImageNet CNNs (repeatable; default: 112 and 224).")
@click.option("--clip", is_flag=True, help="--probe: include the CLIP image towers.")
@json_option
@click.pass_context
def backbones(ctx, data, per_class, names, sizes, clip, as_json):
    """List the embedded and named pre-trained backbones and whether their weights are available.

    Embedded backbones are pre-trained offline by edgecl on first use (cached);
    named ones come from pip packages (the source column says which). Any other
    timm model works too with `edgecl train --backbone NAME --weights FILE`
    (loaded strictly), and Hugging Face hub names (hf-hub:ORG/REPO, timm's
    tagged NAME.TAG) from the Hugging Face cache, downloaded when online
    (docs/backbones.md). --json prints {"backbones": [{"name", "kind", "timm_name",
    "input_size", "weights", "source", "install"}]}.

    With --probe DATA, rank the installed backbones on DATA instead (seconds to a
    minute on a small folder; progress on stderr) and print the options to train
    with, e.g. `use --backbone mobilenetv2-imagenet --img-size 112`:

    \b
    edgecl backbones --probe my_images
    edgecl backbones --probe my_images --backbone mobilenetv2-imagenet@160 --per-class 10 --json
    """
    if data is None:
        given = [name for name in PROBE_ONLY if ctx.get_parameter_source(name).name == "COMMANDLINE"]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} needs --probe DATA")
        return _list(as_json)
    _probe(data, per_class, names, sizes, clip, as_json)


def _list(as_json: bool) -> None:
    """The table of backbones, or its JSON."""
    from ..catalog import backbone_rows

    rows = backbone_rows()
    if as_json:
        return emit_json({"backbones": rows})
    table = [(r["name"], r["timm_name"], f"{r['input_size'][1]}px", r["weights"],
              r["source"] if r["kind"] == "embedded" or r["weights"] == "installed"
              else f"{r['source']}; install: {r['install']}") for r in rows]
    header = ("name", "timm model", "input", "weights")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  source")
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    click.echo("\nAny timm model: --backbone NAME --weights FILE (.pth/.bin/.safetensors; refused unless it fills the model).")
    click.echo("Hugging Face hub: --backbone hf-hub:ORG/REPO (timm or open_clip) or timm's NAME.TAG, from the HF cache "
               "(HF_HUB_OFFLINE=1: cache only).")


def _probe(data: str, per_class: int, names, sizes, clip: bool, as_json: bool) -> None:
    """Rank the backbones on ``data`` (``edgecl.zoo.probe.rank_backbones``) and print the ranking."""
    from ..errors import EdgeclError
    from ..zoo.probe import PROBE_SIZES, expand_candidates, probe_candidates, rank_backbones

    sizes = sizes or PROBE_SIZES
    try:
        candidates, skipped = (expand_candidates(names, sizes), []) if names else probe_candidates(sizes, clip)
        ranking = rank_backbones(data, candidates, per_class=per_class, log=log.info)
    except EdgeclError as exc:
        fail(exc)
    ranking.skipped = skipped
    if as_json:
        return emit_json(ranking.to_dict())
    _print_ranking(ranking)


def _print_ranking(ranking) -> None:
    """The ranking as a table, the skipped backbones and the recommendation line."""
    from ..zoo.probe import TOLERANCE

    table = [(r.backbone, f"{r.img_size}px", f"{r.ncm:.1f}", f"{r.ridge:.1f}",
              f"{r.seconds:.1f} s ({r.ms_per_image:.1f} ms/image)") for r in ranking.rows]
    header = ("backbone", "input", "NCM %", "ridge %", "time")
    widths = [max([len(h), *(len(r[i]) for r in table)]) for i, h in enumerate(header)]
    for row in (header, *table):
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    for s in ranking.skipped:
        click.echo(f"skipped {s['backbone']}: {s['reason']} ({s['hint']})")
    best = ranking.best
    if best is None:
        click.echo("no backbone to probe: install one (see `edgecl backbones`) or name one with --backbone")
    else:
        click.echo(f"use {best.flags()}  (the fastest within {TOLERANCE:g} point of the best mean of NCM and ridge, "
                   f"on {ranking.test_images} test images of {ranking.classes} classes)")
