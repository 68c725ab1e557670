"""``edgecl data``: look at data sets (numpy + Pillow; no torch for generated sets)."""

from __future__ import annotations

import click

from edgecl_runtime.cli.common import emit_json, fail, json_option


@click.group()
def data():
    """Look at data sources before training on them.

    Generated sets (glyphs, emoji) are rendered on first use, with progress on
    stderr, and cached under $EDGECL_CACHE_DIR; `edgecl data preview` renders
    them as a side effect.
    """


def _grid(images, cols: int, scale: int):
    import numpy as np
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = im
    out = Image.fromarray(canvas)
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST) if scale > 1 else out


@data.command()
@click.argument("spec")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--count", type=int, default=64, show_default=True, help="Images in the grid.")
@click.option("--cols", type=int, default=8, show_default=True)
@click.option("--scale", type=int, default=0, help="Pixel zoom (default: to ~64 px tiles).")
@click.option("--seed", type=int, default=0, show_default=True, help="Data seed, and which images are shown.")
@json_option
def preview(spec, out, split, count, cols, scale, seed, as_json):
    """Write a grid of sample images of SPEC to --out.

    SPEC is any --dataset of `edgecl train` (shapes, glyphs:200:cross, emoji:100:cross-symbola,
    a folder, a .npz), or
    `pretrain[:N]` for fresh batches of the pre-training corpus (N classes, default 1000).
    --json prints {"out", "images", "size", "classes"} (the class of each image, row by row).
    """
    import numpy as np

    from ..data import DataError

    if count < 1 or cols < 1:
        raise click.BadParameter("--count and --cols must be >= 1")
    try:
        if spec == "pretrain" or spec.startswith("pretrain:"):
            from ..data.glyphs import pretrain_batches

            n = int(spec.split(":")[1]) if ":" in spec and spec.split(":")[1].isdigit() else 1000
            if spec not in ("pretrain", f"pretrain:{n}"):
                raise DataError(f"bad spec {spec!r}: use pretrain or pretrain:N")
            images, labels = next(pretrain_batches(n, count, seed=seed))
            names = [str(y) for y in labels]
        else:
            from ..data import load_dataset

            ds = load_dataset(spec, seed=seed)[split == "test"]
            pick = np.sort(np.random.default_rng(seed).choice(len(ds), min(count, len(ds)), replace=False))
            images, names = ds.images[pick], [ds.class_names[y] for y in ds.labels[pick]]
    except DataError as exc:
        fail(exc)
    scale = scale or max(1, round(64 / images.shape[1]))
    _grid(np.asarray(images), cols, scale).save(out)
    if as_json:
        return emit_json({"out": out, "images": len(images), "size": list(images.shape[1:3]), "classes": list(names)})
    click.echo(f"{len(images)} images ({images.shape[1]}x{images.shape[2]}) of {spec} -> {out}")
    click.echo("classes, row by row: " + ", ".join(names[: cols * 4]) + (", ..." if len(names) > cols * 4 else ""))


@data.command()
@click.argument("spec")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-shard", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per shard (tar file).")
@click.option("--seed", type=int, default=0, show_default=True, help="Data seed (generation / train-test split).")
@click.option("--train-per-class", type=click.IntRange(min=1), default=30, show_default=True,
              help="Generated sets (shapes, glyphs, emoji): training images per class.")
@click.option("--test-per-class", type=click.IntRange(min=1), default=10, show_default=True,
              help="Generated sets: test images per class.")
@click.option("--json", "as_json", is_flag=True, help="Print the shard paths and counts as JSON.")
def shards(spec, out_dir, per_shard, seed, train_per_class, test_per_class, as_json):
    """Write SPEC as WebDataset tar shards to OUT_DIR (train-NNNNNN.tar, test-NNNNNN.tar, classes.json).

    SPEC is any --dataset of `edgecl train`; an image folder is copied file by file (never loaded whole,
    images kept in their format), other sources are written as PNG. Train on the result with
    `edgecl train --dataset wds:OUT_DIR` (docs/streaming.md).
    """
    import json
    from pathlib import Path

    from ..data import DataError, load_dataset
    from ..data.stream import PREFIXES, write_split_shards

    if Path(spec).is_dir() and not spec.startswith(PREFIXES):
        spec = f"stream:{spec}"
    try:
        train, test = load_dataset(spec, seed=seed, train_per_class=train_per_class, test_per_class=test_per_class)
        report = write_split_shards(train, test, out_dir, per_shard)
    except DataError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for split in ("train", "test"):
        click.echo(f"{split}: {report[split]['samples']} samples in {len(report[split]['shards'])} shard(s)")
    click.echo(f"{report['classes']} classes -> {out_dir} (train with --dataset wds:{out_dir})")
