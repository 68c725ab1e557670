"""Device-side commands (runtime only: numpy + onnxruntime): predict, add-class, eval, info, bench."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .common import progress_bar, fail, load_bundle, device_option, main


@main.command()
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@device_option
def predict(bundle, images, top_k, as_json, device):
    """Classify IMAGES (image files, or .npy arrays of one or N images)."""
    from runtime import EdgeclRuntimeError
    from runtime.io import read_images

    b = load_bundle(bundle, device)
    try:
        arrays = read_images(images)
        pred = b.predict(arrays, top_k=top_k)
    except EdgeclRuntimeError as exc:
        fail(exc)
    # one name per image: the file, or FILE[i] for the images of a batched .npy
    names = []
    for p in images:
        n = len(read_images([p])) if str(p).lower().endswith(".npy") else 1
        names += [str(p)] if n == 1 else [f"{p}[{i}]" for i in range(n)]
    for name, top in zip(names, pred.top_k):
        if as_json:
            click.echo(json.dumps({"image": name, "top_k": [{"class": c, "score": s} for c, s in top]}))
        else:
            click.echo(f"{name}: " + ", ".join(f"{c} ({s:.3f})" for c, s in top))


@main.command(name="add-class")
@click.argument("bundle", type=click.Path())
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@device_option
def add_class(bundle, name, images, device):
    """Teach BUNDLE class NAME from a few IMAGES; the update is saved atomically."""
    from runtime import EdgeclRuntimeError
    from runtime.io import read_images

    b = load_bundle(bundle, device)
    try:
        res = b.add_class(name, read_images(images))
    except EdgeclRuntimeError as exc:
        fail(exc)
    verb = "added new class" if res.created else "extended class"
    click.echo(
        f"{verb} {res.name!r} from {res.examples_added} example(s) ({res.total_examples} in total) in "
        f"{res.seconds * 1e3:.1f} ms; bundle now has {res.num_classes} classes"
    )


@main.command(name="eval")
@click.argument("bundle", type=click.Path())
@click.option("--dataset", default="shapes", show_default=True, help="Data source, as for `train`.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data-seed", type=int, default=0, show_default=True)
@device_option
def eval_cmd(bundle, dataset, split, data_seed, device):
    """Top-1 accuracy of BUNDLE on a data set's classes that the bundle knows."""
    import numpy as np

    from runtime import EdgeclRuntimeError

    from ..data import DataError, load_dataset

    b = load_bundle(bundle, device)
    try:
        ds = load_dataset(dataset, image_size=tuple(b.input_size[1:]), seed=data_seed)[split == "test"]
    except DataError as exc:
        fail(exc)
    known = {n: i for i, n in enumerate(b.classes)}
    mask = np.array([ds.class_names[y] in known for y in ds.labels])
    if not mask.any():
        fail(ValueError(f"none of the {ds.num_classes} classes of {dataset} is known to the bundle"))
    truth = np.array([known[ds.class_names[y]] for y in ds.labels[mask]])
    images = ds.images[mask]
    correct = 0
    try:
        for i in progress_bar(f"eval on {len(images)} images")(range(0, len(images), 256)):
            correct += int(np.sum(b.predict(images[i : i + 256]).indices == truth[i : i + 256]))
    except EdgeclRuntimeError as exc:
        fail(exc)
    skipped = int((~mask).sum())
    click.echo(
        f"top-1 {100.0 * correct / len(images):.2f}% on {len(images)} images of "
        f"{len(set(truth.tolist()))} classes ({b.device})" + (f"; {skipped} images of unknown classes skipped" if skipped else "")
    )


@main.command()
@click.argument("bundle", type=click.Path())
@device_option
def info(bundle, device):
    """Verify BUNDLE's checksums and describe it."""
    b = load_bundle(bundle, device)
    for key, value in b.info().items():
        click.echo(f"{key:>16}: {value}")
    click.echo(f"{'checksums':>16}: ok ({len(b.manifest['files'])} files)")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--repeats", type=int, default=20, show_default=True)
@device_option
def bench(bundle, batch_sizes, repeats, device):
    """Latency of predict and add-class on BUNDLE (add-class runs on a temporary copy)."""
    import shutil
    import tempfile

    import numpy as np

    from runtime import Bundle

    b = load_bundle(bundle, device)
    _, h, w = b.input_size
    rng = np.random.default_rng(0)
    click.echo(f"{b.manifest['backbone']['name']} on {b.device}, {len(b.classes)} classes")
    for bs in [int(v) for v in batch_sizes.split(",")]:
        x = rng.integers(0, 256, (bs, h, w, 3), dtype=np.uint8)
        b.predict(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            b.predict(x)
            times.append(time.perf_counter() - t0)
        ms = 1e3 * np.median(times)
        click.echo(f"predict batch {bs:>4}: {ms:8.2f} ms median ({bs / ms * 1e3:8.1f} images/s)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        bc = Bundle.load(copy, device=device)
        times = []
        for i in range(5):
            res = bc.add_class(f"bench-{i}", rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8))
            times.append(res.seconds)
        click.echo(f"add-class (5 examples, persisted): {1e3 * np.median(times):.2f} ms median")
