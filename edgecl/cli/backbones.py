"""``edgecl backbones``: which backbones exist by name, whether their weights are here, where they come from."""

from __future__ import annotations

import click



@click.command()
def backbones():
    """List the embedded and named pre-trained backbones and whether their weights are available.

    Any other timm model works too with --weights FILE (loaded strictly).
    """
    from ..zoo import EMBEDDED, NAMED
    from ..zoo.embedded import weights_path, weights_status

    rows = []
    for name, recipe in EMBEDDED.items():
        status = weights_status(name)
        size = recipe.input_size[1]
        rows.append((name, recipe.timm_name, f"{size}px", status, f"embedded: made offline by edgecl ({weights_path(name)})"))
    for name, entry in NAMED.items():
        status = entry.status()
        source = entry.source if status == "installed" else f"{entry.source}; install: {entry.install}"
        rows.append((name, entry.timm_name, f"{entry.input_size[1]}px", status, source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("name", "timm model", "input", "weights")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  source")
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    click.echo("\nAny timm model: --backbone NAME --weights FILE (.pth/.bin/.safetensors; refused unless it fills the model).")
