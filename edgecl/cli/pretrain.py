"""``edgecl pretrain``: pre-train an embedded backbone from its recipe (torch)."""

from __future__ import annotations

from pathlib import Path

import click

from edgecl_runtime.cli.common import emit_json, fail, json_option, log, progress_bar

ARCH_ALIASES = {"vit": "edgecl-vit-tiny", "resnet10t": "edgecl-resnet10t", "clip": "edgecl-clip-tiny"}


def resolve_arch(arch: str) -> str:
    """An alias (``vit``, ``resnet10t``) or an embedded backbone name -> the embedded name."""
    from ..zoo import CLIP_MODELS
    from ..zoo.embedded import EMBEDDED

    name = ARCH_ALIASES.get(arch, arch)
    if name not in EMBEDDED and name not in CLIP_MODELS:
        known = sorted(set(ARCH_ALIASES) | set(EMBEDDED) | set(CLIP_MODELS))
        raise click.BadParameter(f"unknown recipe {arch!r}; known: {', '.join(known)}", param_hint="--arch")
    return name


@click.command()
@click.option("--arch", default="vit", show_default=True,
              help="Recipe to train: vit (edgecl-vit-tiny), resnet10t (edgecl-resnet10t), clip (edgecl-clip-tiny: its "
                   "text side, contrastive, docs/clip.md) or an embedded backbone name.")
@click.option("--steps", type=int, default=None, help="Training steps (default: the recipe's).")
@click.option("--batch-size", type=int, default=None, help="Batch size (default: the recipe's).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the recipe's).")
@click.option("--classes", type=int, default=None, help="Pre-training classes of the glyphs task (default: the recipe's).")
@click.option("--seed", type=int, default=None, help="Initialisation seed (default: the recipe's).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads; the same count (and torch build, CPU) reproduces the weights bit-for-bit.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Storage precision of the checkpoint (the model always computes in fp32).")
@click.option("--log-every", type=int, default=50, show_default=True, help="Log the training loss every N steps.")
@click.option("--eval-every", type=int, default=0, help="Also log held-out accuracy every N steps (0: only at the end).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint to write (.safetensors); default: the cache, keyed by the recipe's config hash.")
@click.option("--force", is_flag=True, help="Train even if --out or the cache entry exists, and replace it.")
@json_option
def pretrain(arch, steps, batch_size, lr, classes, seed, threads, dtype, log_every, eval_every, out, force, as_json):
    """Pre-train an embedded backbone (supervised, fresh augmented batches) and save its checkpoint.

    Without --out the checkpoint goes to the cache entry that `edgecl train
    --backbone NAME` uses. Losses are logged on stderr; --json prints
    {"checkpoint", "config_hash", "metrics"} at the end.
    """
    from ..pretrain import cache_path, config_hash, pretrain as run, save_checkpoint
    from ..zoo import CLIP_MODELS, EMBEDDED, create_backbone

    name = resolve_arch(arch)
    recipe = EMBEDDED[name] if name in EMBEDDED else CLIP_MODELS[name][1]
    changes = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    if classes is not None:
        if "num_classes" not in recipe.task_kwargs:
            raise click.BadParameter(f"the {recipe.task} task of {name} has no classes to set", param_hint="--classes")
        changes["task_kwargs"] = dict(recipe.task_kwargs, num_classes=classes)
    if threads < 1:
        raise click.BadParameter("must be >= 1", param_hint="--threads")
    try:
        recipe = recipe.with_(**changes)
    except ValueError as exc:
        fail(exc)
    path = Path(out) if out else cache_path(name, recipe)
    if path.suffix != ".safetensors":
        raise click.BadParameter(f"must end in .safetensors, got {path}", param_hint="--out")
    if path.exists() and not force:
        fail(FileExistsError(f"{path} exists; pass --force to train again and replace it"))
    log.info(f"pre-training {name} (config hash {config_hash(recipe)}): {recipe.timm_name} on task "
               f"{recipe.task} {recipe.task_kwargs}, {recipe.steps} steps x {recipe.batch_size}, {threads} thread(s)")
    if name in CLIP_MODELS:
        return _pretrain_clip(name, recipe, path, threads, dtype, as_json)
    try:
        result = run(recipe, threads=threads, progress=progress_bar("pre-training"), log=log.info,
                     log_every=log_every, eval_every=eval_every, resolve=create_backbone)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(exc)
    save_checkpoint(result.model, path, recipe, result.metrics, dtype=dtype, threads=threads)
    if as_json:
        return emit_json({"checkpoint": str(path), "config_hash": config_hash(recipe), "metrics": result.metrics})
    accs = "  ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if k.startswith("acc_"))
    click.echo(f"final loss {result.metrics['loss']:.4f}  held-out {accs}  ({result.metrics['seconds']:.0f} s)")
    click.echo(f"checkpoint written to {path} ({path.stat().st_size / 1e6:.1f} MB, {dtype})")


def _pretrain_clip(name, recipe, path: Path, threads: int, dtype: str, as_json: bool):
    """The text side of a CLIP model (``edgecl.zoo.clip.make_weights``)."""
    from ..pretrain import config_hash
    from ..zoo.clip import make_weights

    try:
        _, metrics = make_weights(name, path, threads=threads, dtype=dtype, log=log.info, recipe=recipe)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(exc)
    if as_json:
        return emit_json({"checkpoint": str(path), "config_hash": config_hash(recipe), "metrics": metrics})
    click.echo(f"final loss {metrics['loss']:.4f}  batch accuracy {metrics['batch_acc']:.4f}  ({metrics['seconds']:.0f} s)")
    click.echo(f"checkpoint written to {path} ({path.stat().st_size / 1e6:.1f} MB, {dtype})")
