"""Training-side commands (torch): train, export, learners, demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecl_runtime.cli.common import fail, progress_bar


def _parse_learner_args(ctx, param, values) -> dict:
    """``KEY=VALUE`` strings -> dict; values are JSON literals, anything else stays a string."""
    import json

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


@click.command()
@click.option("--dataset", default="shapes", show_default=True,
              help="'shapes' / 'shapes:N' (embedded), 'glyphs:N[:within|cross][:SIZE]' (rendered from "
                   "matplotlib's fonts, cached), 'emoji:N[:within|cross-VENDOR][:SIZE]' (five emoji vendors, "
                   "cached; docs/emoji.md), an image folder (one sub-folder per class), a .npz file, or data kept on disk: "
                   "'wds:DIR|PATTERN' (WebDataset tar shards) or 'stream:DIR' (docs/streaming.md).")
@click.option("--backbone", default=None, help="Backbone: an embedded or named one (see `edgecl backbones`: edgecl-resnet10t, "
                   "edgecl-resnet10t-glyphs, edgecl-vit-tiny, mobilenetv2-imagenet, ...) or any timm model name "
                   "with --weights; default: the embedded edgecl-resnet10t.")
@click.option("--weights", default=None, help="Local timm checkpoint / .safetensors for --backbone, or 'random'.")
@click.option("--img-size", type=int, default=None, help="Input resolution override for timm backbones.")
@click.option("--learner", default="simplecil", show_default=True, help="Continual learner (see `edgecl learners`).")
@click.option("--init-cls", type=int, default=10, show_default=True, help="Classes in the first task (0: = increment).")
@click.option("--increment", type=int, default=10, show_default=True, help="New classes per later task.")
@click.option("--seed", type=int, default=1993, show_default=True, help="Seed of the class order.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the data (generation / split).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device for training (cpu, cuda).")
@click.option("--engine", type=click.Choice(["auto", "torch", "torch-fused", "onnx"]), default="auto", show_default=True,
              help="How frozen modules embed images: eager torch, fused TorchScript (BatchNorm folded), the exported "
                   "ONNX graph in onnxruntime, or auto (the fastest that matches eager torch within 1e-4, measured).")
@click.option("--embedding-cache/--no-embedding-cache", default=True, show_default=True,
              help="Embed each image once per frozen module state, cached under $EDGECL_CACHE_DIR/embeddings "
                   "(reused by later tasks' evaluation, other learners and later runs).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch and onnxruntime intra-op threads (default: torch's default).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--learner-arg", "learner_args", multiple=True, metavar="KEY=VALUE", callback=_parse_learner_args,
              help="Learner hyper-parameter (repeatable); VALUE is a JSON literal (2048, 0.1, true, null, [1, 2]) "
                   "or else a plain string. See `edgecl learners`.")
def train(dataset, backbone, weights, img_size, learner, init_cls, increment, seed, data_seed, batch_size, device, engine,
          embedding_cache, threads, out_dir, learner_args):
    """Run the class-incremental protocol and save the run to --out."""
    from ..backbones import DEFAULT_BACKBONE, BackboneError
    from ..data import DataError
    from ..experiment import RunConfig, run_experiment
    from ..features import EngineError

    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = RunConfig(
        dataset=dataset, backbone=backbone or DEFAULT_BACKBONE, weights=weights, img_size=img_size, learner=learner,
        init_cls=init_cls, increment=increment, order_seed=seed, data_seed=data_seed, batch_size=batch_size,
        device=device, learner_args=learner_args, engine=engine, embedding_cache=embedding_cache,
    )
    try:
        run_experiment(cfg, out_dir=out_dir, log=click.echo, progress=progress_bar)
    except (BackboneError, DataError, EngineError, ValueError) as exc:
        fail(exc)


@click.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Backbone precision: int8 (CPU: static QDQ quantization), fp16 (GPU bundles).")
@click.option("--calibration-size", type=click.IntRange(min=0), default=128, show_default=True,
              help="int8: training images to calibrate on; 0 = dynamic quantization (no calibration).")
@click.option("--head-precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Storage precision of the head arrays (the runtime computes in fp32).")
@click.option("--allow-divergence", is_flag=True,
              help="Write an fp16/int8 bundle even if its embeddings diverge from fp32 (recorded in the manifest).")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Sign the bundle with this Ed25519 private key (`edgecl keygen`); devices given the public key "
                   "refuse anything else.")
def export_cmd(run_dir, out_dir, opset, exporter, force, precision, calibration_size, head_precision, allow_divergence,
               sign_key):
    """Export RUN_DIR to an ONNX bundle in OUT_DIR (parity-checked against torch)."""
    from edgecl_export import ExportError, export_run
    from edgecl_runtime import EdgeclRuntimeError, store

    from ..rundir import RunDirError

    options = {"calibration_size": calibration_size, "head_precision": head_precision, "allow_divergence": allow_divergence}
    try:
        rep = export_run(run_dir, out_dir, opset=opset, exporter=exporter, overwrite=force, precision=precision,
                         precision_options=options)
    except (ExportError, RunDirError) as exc:
        fail(exc)
    if sign_key:
        try:
            click.echo(f"signed with key {store.sign_bundle(rep.path, sign_key)}")
        except EdgeclRuntimeError as exc:
            fail(exc)
    click.echo(
        f"bundle written to {rep.path}: {rep.num_classes} classes, {rep.bytes / 1e6:.1f} MB, "
        f"ONNX vs torch max abs diff {rep.parity_max_abs_diff:.2e}"
    )
    if precision != "fp32":
        import json

        section = json.loads((Path(rep.path) / "manifest.json").read_text())["precision"]
        check = section.get("check", {})
        click.echo(
            f"{precision} backbone ({section['conversion']['method']}): embedding cosine vs fp32 "
            f"mean {check.get('cosine_mean', float('nan')):.4f} min {check.get('cosine_min', float('nan')):.4f}"
            + (f", top-1 agreement {100 * check['top1_agreement']:.1f}%" if "top1_agreement" in check else "")
            + (f", top-1 {100 * check['top1_fp32']:.2f}% (fp32) -> {100 * check['top1_converted']:.2f}%"
               if "top1_fp32" in check else "")
            + (f"\nWARNING: {section['diverged']}" if section.get("diverged") else "")
        )
        if section["conversion"].get("quantized_nodes") == 0:
            click.echo("WARNING: no node was quantized (dynamic quantization covers MatMul/Gemm only): "
                       "the bundle is effectively fp32; give calibration images for static INT8")


@click.command()
def learners():
    """List the registered continual learners."""
    from ..learners import LEARNERS

    for name, cls in sorted(LEARNERS.items()):
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        click.echo(f"{name:12} {doc[0] if doc else ''}")


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="edgecl-demo", show_default=True)
@click.option("--holdout", type=int, default=5, show_default=True, help="Classes kept back to add on the device.")
def demo(workdir, holdout):
    """The whole pipeline on the embedded default: train -> export -> predict -> add a class."""
    import shutil

    import numpy as np

    from edgecl_export import export_run
    from edgecl_runtime import Bundle

    from ..data import make_shapes
    from ..experiment import RunConfig, run_experiment

    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    n_train = 100 - holdout
    click.secho(f"1/4 train: SimpleCIL on {n_train} embedded shapes classes, 10 per task", bold=True)
    run_experiment(RunConfig(dataset=f"shapes:{n_train}"), out_dir=work / "run", log=click.echo, progress=progress_bar)
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
