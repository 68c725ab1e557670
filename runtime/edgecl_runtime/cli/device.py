"""Device-side commands (runtime only: numpy + onnxruntime): predict, add-class, eval, info.

``bench`` lives in ``bench.py``."""

from __future__ import annotations

import json

import click

from .common import device_option, emit_json, fail, json_option, load_bundle, load_plugin, main, progress_bar, threads_option
from .common import unknown_option


@main.command()
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=1, show_default=True)
@click.option("--unknown", "unknown", default=None, metavar="auto|THRESHOLD", callback=unknown_option,
              help="Reject images unlike every known class: 'auto' uses the threshold calibrated at export, a number "
                   "sets it (scores above it are unknown). Rejected images print as 'unknown' (JSON label null).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON lines: image, label (null when unknown), unknown_score, top_k.")
@device_option
@threads_option
def predict(bundle, images, top_k, unknown, as_json, device):
    """Classify IMAGES (image files, or .npy arrays of one or N images).

    Every image also gets an unknown score (higher: less like any class the bundle knows; docs/unknown.md)."""
    from edgecl_runtime import EdgeclRuntimeError
    from edgecl_runtime.io import read_images

    b = load_bundle(bundle, device)
    try:
        arrays = read_images(images)
        pred = b.predict(arrays, top_k=top_k, unknown=unknown)
    except EdgeclRuntimeError as exc:
        fail(exc)
    # one name per image: the file, or FILE[i] for the images of a batched .npy
    names = []
    for p in images:
        n = len(read_images([p])) if str(p).lower().endswith(".npy") else 1
        names += [str(p)] if n == 1 else [f"{p}[{i}]" for i in range(n)]
    for name, label, u, top in zip(names, pred.labels, pred.unknown_scores, pred.top_k):
        if as_json:
            click.echo(json.dumps({"image": name, "label": label, "unknown_score": float(u),
                                   "top_k": [{"class": c, "score": s} for c, s in top]}))
        else:
            tops = ", ".join(f"{c} ({s:.3f})" for c, s in top)
            click.echo(f"{name}: " + (tops if label is not None else f"unknown (score {u:.3f}; nearest {tops})"))


@main.command(name="add-class")
@click.argument("bundle", type=click.Path())
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--by-name", is_flag=True,
              help="Also (or, without IMAGES, only) learn NAME from its name: the bundle's text tower makes a "
                   "prototype of it (bundles exported from a CLIP backbone, e.g. edgecl-clip-tiny, with a prototype head).")
@click.option("--text", default=None, metavar="TEXT", help="Like --by-name, from TEXT instead of NAME (e.g. a Unicode name).")
@device_option
@threads_option
@json_option
def add_class(bundle, name, images, by_name, text, device, as_json):
    """Teach BUNDLE class NAME from a few IMAGES (files, or .npy arrays of images), from its name alone
    (--by-name, zero-shot), or both; the update is saved atomically (journaled: `edgecl history` lists it,
    `edgecl rollback` undoes it). An existing NAME gets the new examples too. The time reported is split into
    embedding the examples and the update; the first update of a ridge head (RanPAC, SLCA) after loading forms
    (G + lam I)^-1, about 1 s at M = 2048, which a device app that keeps the bundle loaded pays once. --json
    prints {"class", "created", "examples_added", "total_examples", "num_classes", "seconds", "embed_seconds",
    "update_seconds", "by_text"}."""
    from edgecl_runtime import EdgeclRuntimeError
    from edgecl_runtime.io import read_images

    if not images and not (by_name or text):
        raise click.UsageError("give IMAGES, --by-name, --text TEXT, or images with one of them")
    b = load_bundle(bundle, device)
    try:
        res = b.add_class(name, read_images(images) if images else None, text=text or by_name or None)
    except EdgeclRuntimeError as exc:
        fail(exc)
    if as_json:
        return emit_json({"class": res.name, "created": res.created, "examples_added": res.examples_added,
                          "total_examples": res.total_examples, "num_classes": res.num_classes, "seconds": res.seconds,
                          "embed_seconds": res.embed_seconds, "update_seconds": res.update_seconds,
                          "by_text": text or (name if by_name else None)})
    verb = "added new class" if res.created else "extended class"
    source = f" and {'its name' if not text else repr(text)}" if (by_name or text) else ""
    click.echo(
        f"{verb} {res.name!r} from {res.examples_added} example(s){source} ({res.total_examples} in total) in "
        f"{res.seconds * 1e3:.1f} ms (embedding {res.embed_seconds * 1e3:.1f}, update {res.update_seconds * 1e3:.1f} ms); "
        f"bundle now has {res.num_classes} classes"
    )


def known_images(b, dataset: str, split: str, data_seed: int, unknowns: bool = False):
    """Images of ``dataset``'s ``split`` whose classes ``b`` knows, their class indices in ``b``, and the skip count.

    Data sets are read by the training distribution's loader (entry point
    ``edgecl.plugins: load_dataset``), so generated sets and image folders split
    exactly as in training.
    """
    import numpy as np

    load_dataset = load_plugin("load_dataset", f"--dataset {dataset}")
    try:
        ds = load_dataset(dataset, image_size=tuple(b.input_size[1:]), seed=data_seed)[split == "test"]
    except ValueError as exc:  # the loader's DataError is a ValueError
        fail(exc)
    known = {n: i for i, n in enumerate(b.classes)}
    mask = np.array([ds.class_names[y] in known for y in ds.labels])
    if not mask.any():
        fail(ValueError(f"none of the {ds.num_classes} classes of {dataset} is known to the bundle"))
    truth = np.array([known[ds.class_names[y]] for y in ds.labels[mask]])
    if unknowns:  # the images of the classes the bundle does not know, too
        return ds.images[mask], truth, ds.images[~mask]
    return ds.images[mask], truth, int((~mask).sum())


def bundle_accuracy(b, dataset: str, split: str = "test", data_seed: int = 0, batch_size: int = 256,
                    progress=None) -> dict:
    """Top-1 of bundle ``b`` on the images of ``dataset``'s ``split`` whose classes it knows.

    ``progress``: an optional wrapper of the batch iterable (``progress_bar``)."""
    import numpy as np

    images, truth, skipped = known_images(b, dataset, split, data_seed)
    batches = range(0, len(images), batch_size)
    pred = np.concatenate([b.predict(images[i : i + batch_size]).indices for i in (progress or iter)(batches)])
    return {"dataset": dataset, "split": split, "images": int(len(images)), "classes": int(len(set(truth.tolist()))),
            "top1": float(np.mean(pred == truth)), "skipped_unknown": skipped}


def bundle_open_set(b, dataset: str, split: str, data_seed: int, unknown) -> dict:
    """``edgecl_runtime.unknown.open_set_report`` of bundle ``b`` on ``dataset``: its unknown classes' images as unknowns."""
    from edgecl_runtime.unknown import open_set_report

    images, truth, others = known_images(b, dataset, split, data_seed, unknowns=True)
    if len(others) == 0:
        fail(ValueError(f"every class of {dataset} is known to the bundle: no unknown images to measure with"))
    threshold = b.unknown_threshold(unknown)
    return {"score": b.unknown_score_name(), **open_set_report(b.predict(images), truth, b.predict(others), threshold)}


def describe_open_set(r: dict) -> str:
    line = (f"unknown score {r['score']}: AUROC {r['auroc']:.3f}, FPR at 95% TPR {100 * r['fpr_at_95_tpr']:.1f}% "
            f"({r['known_images']} known, {r['unknown_images']} unknown images)")
    if r.get("threshold") is not None:
        line += (f"\nat threshold {r['threshold']:.4g}: {100 * r['known_accepted']:.1f}% of known and "
                 f"{100 * r['unknown_accepted']:.1f}% of unknown images accepted; top-1 {100 * r['top1_at_threshold']:.2f}% "
                 f"counting rejections as errors, {100 * r['top1_of_accepted']:.2f}% of the accepted")
    return line


@main.command(name="eval")
@click.argument("bundle", type=click.Path())
@click.option("--dataset", default="shapes", show_default=True, help="Data source, as for `train`.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--unknown", "unknown", default=None, metavar="auto|THRESHOLD", callback=unknown_option,
              help="Also measure the unknown score: the data set's classes the bundle does not know are the unknowns "
                   "(AUROC, FPR at 95% TPR, and at the threshold: known/unknown accepted, top-1).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@device_option
@threads_option
def eval_cmd(bundle, dataset, split, data_seed, unknown, as_json, device):
    """Top-1 accuracy of BUNDLE on a data set's classes that the bundle knows."""
    from edgecl_runtime import EdgeclRuntimeError

    b = load_bundle(bundle, device)
    try:
        result = {**bundle_accuracy(b, dataset, split, data_seed, progress=progress_bar(f"eval on {dataset}")),
                  "device": b.device}
        if unknown is not None:
            result["unknown"] = bundle_open_set(b, dataset, split, data_seed, unknown)
    except EdgeclRuntimeError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(result))
        return
    if unknown is not None:
        click.echo(describe_open_set(result["unknown"]))
    skipped = result["skipped_unknown"]
    click.echo(
        f"top-1 {100.0 * result['top1']:.2f}% on {result['images']} images of "
        f"{result['classes']} classes ({b.device})" + (f"; {skipped} images of unknown classes skipped" if skipped else "")
    )


@main.command()
@click.argument("bundle", type=click.Path())
@device_option
@click.option("--trust-modified", is_flag=True,
              help="Accept files whose checksum differs from the manifest: logged, and re-sealed in the manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object.")
def info(bundle, device, trust_modified, as_json):
    """Verify BUNDLE's checksums (and its journal) and describe it."""
    from .store import load_trusted

    b = load_trusted(bundle, device) if trust_modified else load_bundle(bundle, device)
    if as_json:
        click.echo(json.dumps({**b.info(), "checksums": "ok", "files": len(b.manifest["files"])}))
        return
    for key, value in b.info().items():
        click.echo(f"{key:>16}: {value}")
    click.echo(f"{'checksums':>16}: ok ({len(b.manifest['files'])} files)")
