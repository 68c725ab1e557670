"""``edgecl backbones``: which backbones exist by name, whether their weights are here, where they come from."""

from __future__ import annotations

import click

from edgecl_runtime.cli.common import emit_json, json_option


@click.command()
@json_option
def backbones(as_json):
    """List the embedded and named pre-trained backbones and whether their weights are available.

    Embedded backbones are pre-trained offline by edgecl on first use (cached);
    named ones come from pip packages (the source column says which). Any other
    timm model works too with `edgecl train --backbone NAME --weights FILE`
    (loaded strictly). --json prints {"backbones": [{"name", "kind", "timm_name",
    "input_size", "weights", "source", "install"}]}.
    """
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
