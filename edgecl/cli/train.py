"""Training-side commands (torch): train, export, learners, demo."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from edgecl_runtime.cli.common import emit_json, fail, json_option, log, progress_bar
from edgecl_runtime.errors import EdgeclRuntimeError

from ..curves import CSV_NAME, PNG_NAME


def _parse_learner_args(ctx, param, values) -> dict:
    """``KEY=VALUE`` strings -> dict; values are JSON literals, anything else stays a string."""
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
                   "with --weights, or a Hugging Face hub name: hf-hub:ORG/REPO (a timm or open_clip repo) or "
                   "timm's tagged NAME.TAG (docs/backbones.md); default: for an image folder the best installed "
                   "ImageNet backbone (mobilenetv2-imagenet at 112 px, said in the output), else the embedded "
                   "edgecl-resnet10t.")
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
@click.option("--force", is_flag=True, help="Replace the run --out holds, if any (without it such an --out is "
                                        "refused before training starts).")
@click.option("--learner-arg", "learner_args", multiple=True, metavar="KEY=VALUE", callback=_parse_learner_args,
              help="Learner hyper-parameter (repeatable); VALUE is a JSON literal (2048, 0.1, true, null, [1, 2]) "
                   "or else a plain string. See `edgecl learners NAME` for a learner's hyper-parameters.")
@click.option("--config", "config_file", type=click.Path(exists=True),
              help="Re-run a saved run's configuration: a run directory, its run.json, or a JSON file with the "
                   "configuration. Options given on the command line override it (--learner-arg adds to or "
                   "overrides its learner arguments; a different --learner drops them).")
@json_option
@click.pass_context
def train(ctx, dataset, backbone, weights, img_size, learner, init_cls, increment, seed, data_seed, batch_size, device,
          engine, embedding_cache, threads, out_dir, force, learner_args, config_file, as_json):
    """Run the class-incremental protocol and save the run to --out.

    The data set is split into tasks of new classes (--init-cls, then
    --increment each); the learner learns them one by one and is tested on
    all classes seen so far after each. Progress goes to stderr; the result
    (average incremental and last accuracy, forgetting) to stdout. The run
    directory holds run.json (configuration, class names, metrics), the
    backbone and the learner's state (for `edgecl export`), and the per-task
    accuracy as accuracy.csv and accuracy.png.

    \b
    edgecl train --dataset shapes:20 --out runs/a
    edgecl train --config runs/a --learner-arg M=512 --out runs/b   # a's run, one change

    Under torchrun (torchrun --nproc-per-node N --no-python edgecl train ...)
    the ranks share the data and reduce their statistics
    (docs/distributed.md); rank 0 writes --out and prints the result.
    """
    from .. import distributed
    from ..data.sources import collect_unread
    from ..errors import EdgeclError
    from ..experiment import run_experiment
    from ..rundir import RUN_JSON

    if not force and (Path(out_dir) / RUN_JSON).exists():
        raise click.UsageError(f"{out_dir} already holds a run ({RUN_JSON}); give --force to replace it, "
                               "or another --out")
    try:
        device = distributed.init_from_env(device)
    except distributed.DistributedError as exc:
        fail(exc)
    if threads:
        import torch

        torch.set_num_threads(threads)
    completed = False
    try:
        cfg = _run_config(ctx, config_file)
        with collect_unread() as unread:  # the image folder's files not read (also warned on stderr)
            result = run_experiment(cfg, out_dir=out_dir, log=log.info, progress=progress_bar)
        completed = True
    except (EdgeclError, EdgeclRuntimeError) as exc:  # bad input or configuration: one line, exit 1
        fail(exc)
    finally:
        main = distributed.is_main()  # asked before the group is gone: without one every process is rank 0
        distributed.shutdown(completed)
    if not main:
        return
    m, choice = result.metrics, result.backbone_choice
    if as_json:
        return emit_json({"run_dir": str(out_dir), "config": asdict(result.config),
                          "class_order": result.scenario.class_order, "backbone": choice.to_dict(),
                          "unread_files": unread, "metrics": m.to_dict(), "files": {"csv": str(Path(out_dir) / CSV_NAME),
                                                             "png": str(Path(out_dir) / PNG_NAME)}})
    click.echo(f"{out_dir}: average incremental accuracy {m.average_incremental:.2f}%, last {m.last:.2f}%, "
               f"forgetting {m.forgetting:.2f} ({len(m.overall)} tasks); {choice.describe()}")


# train's options -> RunConfig fields (the others have the same name; options that are no field, such as
# --threads or --out, are not part of the configuration)
_CONFIG_FIELDS = {"seed": "order_seed"}


def _run_config(ctx: click.Context, config_file: str | None):
    """The run's ``RunConfig``: the command line's options, over the saved configuration of ``--config`` if given
    (then only options given explicitly count)."""
    from dataclasses import fields

    from click.core import ParameterSource

    from ..experiment import RunConfig
    from ..rundir import read_config

    base = read_config(config_file) if config_file else {}
    explicit = {name for name in ctx.params
                if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    known = {f.name for f in fields(RunConfig)}
    values = dict(base)
    for name, value in ctx.params.items():
        field = _CONFIG_FIELDS.get(name, name)
        if field not in known or field == "learner_args" or (config_file and name not in explicit):
            continue
        values[field] = value
    if config_file and "learner" in explicit and base.get("learner") not in (None, values["learner"]):
        values["learner_args"] = {}  # the saved arguments belong to the saved learner
    values["learner_args"] = {**values.get("learner_args", {}), **ctx.params["learner_args"]}
    return RunConfig.from_dict(values)  # no backbone: run_experiment chooses one for the data set


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
@json_option
def export_cmd(run_dir, out_dir, opset, exporter, force, precision, calibration_size, head_precision, allow_divergence,
               sign_key, as_json):
    """Export RUN_DIR (from `edgecl train`) to an ONNX bundle in OUT_DIR, parity-checked against torch.

    The bundle (model.onnx, the head's arrays, manifest.json) needs only
    edgecl-runtime on the device. --json prints {"path", "num_classes",
    "bytes", "parity_max_abs_diff", "precision", "signed_by"}.
    """
    from edgecl_runtime import EdgeclRuntimeError, store

    from ..workflows.export import ExportError, RunDirError, export_run

    options = {"calibration_size": calibration_size, "head_precision": head_precision, "allow_divergence": allow_divergence}
    try:
        rep = export_run(run_dir, out_dir, opset=opset, exporter=exporter, overwrite=force, precision=precision,
                         precision_options=options)
        key = store.sign_bundle(rep.path, sign_key) if sign_key else None
    except (ExportError, RunDirError, EdgeclRuntimeError) as exc:
        fail(exc)
    section = json.loads((Path(rep.path) / "manifest.json").read_text(encoding="utf-8"))["precision"]
    for warning in _precision_warnings(section):
        log.warning(f"WARNING: {warning}")
    if as_json:
        return emit_json({"path": str(rep.path), "num_classes": rep.num_classes, "bytes": rep.bytes,
                          "parity_max_abs_diff": rep.parity_max_abs_diff, "precision": section, "signed_by": key})
    if key:
        click.echo(f"signed with key {key}")
    click.echo(f"bundle written to {rep.path}: {rep.num_classes} classes, {rep.bytes / 1e6:.1f} MB, "
               f"ONNX vs torch max abs diff {rep.parity_max_abs_diff:.2e}")
    if precision != "fp32":
        click.echo(_precision_line(precision, section))


def _precision_line(precision: str, section: dict) -> str:
    """One line on a reduced-precision backbone's check against fp32 (the manifest's ``precision`` section)."""
    check = section.get("check", {})
    return (f"{precision} backbone ({section['conversion']['method']}): embedding cosine vs fp32 "
            f"mean {check.get('cosine_mean', float('nan')):.4f} min {check.get('cosine_min', float('nan')):.4f}"
            + (f", top-1 agreement {100 * check['top1_agreement']:.1f}%" if "top1_agreement" in check else "")
            + (f", top-1 {100 * check['top1_fp32']:.2f}% (fp32) -> {100 * check['top1_converted']:.2f}%"
               if "top1_fp32" in check else ""))


def _precision_warnings(section: dict) -> list[str]:
    out = [section["diverged"]] if section.get("diverged") else []
    if section.get("conversion", {}).get("quantized_nodes") == 0:
        out.append("no node was quantized (dynamic quantization covers MatMul/Gemm only): the bundle is effectively "
                   "fp32; give calibration images for static INT8")
    return out


@click.command()
@click.argument("name", required=False)
@json_option
def learners(name, as_json):
    """List the continual learners, or with NAME the hyper-parameters of one.

    \b
    edgecl learners              one line per learner: name and what it is
    edgecl learners ranpac       its hyper-parameters: default, type, allowed values, meaning
    edgecl learners NAME --json  the same as JSON ({"name", "summary", "hparams": [...]})

    Set a hyper-parameter with `edgecl train --learner NAME --learner-arg KEY=VALUE`.
    """
    from ..catalog import learner_hparams, learner_rows, learner_summary

    if name is None:
        rows = learner_rows()
        if as_json:
            return emit_json({"learners": rows})
        for row in rows:
            click.echo(f"{row['name']:12} {row['summary']}")
        return
    try:
        hparams = learner_hparams(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if as_json:
        return emit_json({"name": name, "summary": learner_summary(name), "hparams": hparams})
    click.echo(f"{name}: {learner_summary(name)}")
    if not hparams:
        click.echo("no hyper-parameters")
    for h in hparams:
        allowed = f" one of {', '.join(map(str, h['choices']))}" if h["choices"] else " > 0" if h["positive"] else ""
        click.echo(f"  {h['name']} = {json.dumps(h['default'])}  ({h['type']}{allowed})\n      {h['meaning']}")


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="edgecl-demo", show_default=True)
@click.option("--holdout", type=int, default=5, show_default=True, help="Classes kept back to add on the device.")
def demo(workdir, holdout):
    """The whole pipeline on the embedded default: train -> export -> predict -> add a class."""
    from ..workflows import run_demo

    run_demo(workdir, holdout, log=click.echo, step=lambda line: click.secho(line, bold=True), progress=progress_bar)
