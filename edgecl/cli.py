"""``edgecl`` command line: train, export, predict, add-class, eval, info, bench, demo.

Device-side commands (predict, add-class, eval, info, bench) use only the
runtime (numpy + onnxruntime); torch is imported by train/export/demo alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__


def _bar(label: str):
    """A click progress bar wrapper for an iterable with a length, on stderr."""

    def wrap(iterable):
        with click.progressbar(iterable, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar

    return wrap


def _fail(exc: Exception) -> None:
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


def _load_bundle(path: str, device: str):
    from runtime import Bundle, EdgeclRuntimeError

    try:
        return Bundle.load(path, device=device)
    except EdgeclRuntimeError as exc:
        _fail(exc)


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Execution provider: auto picks CUDA when onnxruntime has it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecl")
def main():
    """Continual learning with pre-trained models, exported to the edge."""


@main.command()
@click.option("--dataset", default="shapes", show_default=True,
              help="'shapes' / 'shapes:N' (embedded), an image folder (one sub-folder per class) or a .npz file.")
@click.option("--backbone", default=None, help="timm model name; default: the embedded edgecl-resnet10t.")
@click.option("--weights", default=None, help="Local timm checkpoint / .safetensors for --backbone, or 'random'.")
@click.option("--img-size", type=int, default=None, help="Input resolution override for timm backbones.")
@click.option("--learner", default="simplecil", show_default=True, help="Continual learner (see `edgecl learners`).")
@click.option("--init-cls", type=int, default=10, show_default=True, help="Classes in the first task (0: = increment).")
@click.option("--increment", type=int, default=10, show_default=True, help="New classes per later task.")
@click.option("--seed", type=int, default=1993, show_default=True, help="Seed of the class order.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the data (generation / split).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device for training (cpu, cuda).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
def train(dataset, backbone, weights, img_size, learner, init_cls, increment, seed, data_seed, batch_size, device, out_dir):
    """Run the class-incremental protocol and save the run to --out."""
    from .backbones import DEFAULT_BACKBONE, BackboneError
    from .data import DataError
    from .experiment import RunConfig, run_experiment

    cfg = RunConfig(
        dataset=dataset, backbone=backbone or DEFAULT_BACKBONE, weights=weights, img_size=img_size, learner=learner,
        init_cls=init_cls, increment=increment, order_seed=seed, data_seed=data_seed, batch_size=batch_size,
        device=device,
    )
    try:
        run_experiment(cfg, out_dir=out_dir, log=click.echo, progress=_bar)
    except (BackboneError, DataError, ValueError) as exc:
        _fail(exc)


@main.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
def export_cmd(run_dir, out_dir, opset, exporter, force):
    """Export RUN_DIR to an ONNX bundle in OUT_DIR (parity-checked against torch)."""
    from export import ExportError, export_run

    from .rundir import RunDirError

    try:
        rep = export_run(run_dir, out_dir, opset=opset, exporter=exporter, overwrite=force)
    except (ExportError, RunDirError) as exc:
        _fail(exc)
    click.echo(
        f"bundle written to {rep.path}: {rep.num_classes} classes, {rep.bytes / 1e6:.1f} MB, "
        f"ONNX vs torch max abs diff {rep.parity_max_abs_diff:.2e}"
    )


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

    b = _load_bundle(bundle, device)
    try:
        arrays = read_images(images)
        pred = b.predict(arrays, top_k=top_k)
    except EdgeclRuntimeError as exc:
        _fail(exc)
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

    b = _load_bundle(bundle, device)
    try:
        res = b.add_class(name, read_images(images))
    except EdgeclRuntimeError as exc:
        _fail(exc)
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

    from .data import DataError, load_dataset

    b = _load_bundle(bundle, device)
    try:
        ds = load_dataset(dataset, image_size=tuple(b.input_size[1:]), seed=data_seed)[split == "test"]
    except DataError as exc:
        _fail(exc)
    known = {n: i for i, n in enumerate(b.classes)}
    mask = np.array([ds.class_names[y] in known for y in ds.labels])
    if not mask.any():
        _fail(ValueError(f"none of the {ds.num_classes} classes of {dataset} is known to the bundle"))
    truth = np.array([known[ds.class_names[y]] for y in ds.labels[mask]])
    images = ds.images[mask]
    correct = 0
    try:
        for i in _bar(f"eval on {len(images)} images")(range(0, len(images), 256)):
            correct += int(np.sum(b.predict(images[i : i + 256]).indices == truth[i : i + 256]))
    except EdgeclRuntimeError as exc:
        _fail(exc)
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
    b = _load_bundle(bundle, device)
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

    b = _load_bundle(bundle, device)
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


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="edgecl-demo", show_default=True)
@click.option("--holdout", type=int, default=5, show_default=True, help="Classes kept back to add on the device.")
def demo(workdir, holdout):
    """The whole pipeline on the embedded default: train -> export -> predict -> add a class."""
    import shutil

    import numpy as np

    from export import export_run
    from runtime import Bundle

    from .data import make_shapes
    from .experiment import RunConfig, run_experiment

    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    n_train = 100 - holdout
    click.secho(f"1/4 train: SimpleCIL on {n_train} embedded shapes classes, 10 per task", bold=True)
    run_experiment(RunConfig(dataset=f"shapes:{n_train}"), out_dir=work / "run", log=click.echo, progress=_bar)
    click.secho("2/4 export: ONNX bundle", bold=True)
    rep = export_run(work / "run", work / "bundle")
    click.echo(f"bundle {rep.path}: {rep.bytes / 1e6:.1f} MB, ONNX vs torch max abs diff {rep.parity_max_abs_diff:.2e}")
    click.secho("3/4 runtime predict (onnxruntime, no torch in the loop)", bold=True)
    bundle = Bundle.load(work / "bundle")
    _, test = make_shapes(100, 1, 20, seed=7)
    names = np.array(test.class_names)[test.labels]
    seen = np.isin(names, bundle.classes)
    pred = bundle.predict(test.images[seen])
    acc = np.mean(np.array(pred.labels) == names[seen])
    click.echo(f"device: {bundle.device}; top-1 on {seen.sum()} fresh images of {len(bundle.classes)} classes: {100 * acc:.2f}%")
    click.secho(f"4/4 add-class on the device: {holdout} unseen classes from 5 examples each", bold=True)
    train_new, _ = make_shapes(100, 5, 1, seed=11)
    for c in range(n_train, 100):
        name = train_new.class_names[c]
        res = bundle.add_class(name, train_new.images[train_new.labels == c])
        click.echo(f"  added {name!r} in {res.seconds * 1e3:.1f} ms")
    reloaded = Bundle.load(work / "bundle")
    new = ~seen
    pred_new = reloaded.predict(test.images[new])
    acc_new = np.mean(np.array(pred_new.labels) == names[new])
    pred_all = reloaded.predict(test.images)
    acc_all = np.mean(np.array(pred_all.labels) == names)
    click.echo(
        f"after reload: new classes recognised {100 * acc_new:.2f}% ({new.sum()} images), "
        f"all {len(reloaded.classes)} classes {100 * acc_all:.2f}%"
    )


@main.command()
def learners():
    """List the registered continual learners."""
    from .learners import LEARNERS

    for name, cls in sorted(LEARNERS.items()):
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        click.echo(f"{name:12} {doc[0] if doc else ''}")


if __name__ == "__main__":
    main()
