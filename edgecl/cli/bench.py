"""``edgecl bench``: what a bundle costs on this machine, optionally side by side with torch.

The device numbers (cold start, latency, throughput, peak RSS, add-class)
come from ``runtime.benchmark`` run in a fresh subprocess that imports only
the runtime, so they are those of a device process. Accuracy (``--dataset``)
and the torch comparison (``--compare-torch``) run in this process; the
comparison times ONNX and torch in turn on the same preprocessed images
(``runtime.benchmark.interleaved``), so that a busy machine slows both alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from .common import device_option, fail, load_bundle, main


def device_benchmark(bundle: str | Path, device: str = "auto", threads: int | None = None, repeats: int = 50,
                     batch_size: int = 32) -> dict:
    """``runtime.benchmark`` in a fresh interpreter (runtime only), plus ``import runtime`` time."""
    from runtime.benchmark import import_seconds

    cmd = [sys.executable, "-m", "runtime.benchmark", str(bundle), "--device", device, "--repeats", str(repeats),
           "--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise click.ClickException(f"device benchmark failed:\n{proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    result["import_runtime_s"] = import_seconds("runtime")
    return result


def bundle_accuracy(b, dataset: str, split: str = "test", data_seed: int = 0, batch_size: int = 256) -> dict:
    """Top-1 of bundle ``b`` on the images of ``dataset``'s ``split`` whose classes it knows."""
    import numpy as np

    from ..data import load_dataset

    ds = load_dataset(dataset, image_size=tuple(b.input_size[1:]), seed=data_seed)[split == "test"]
    known = {n: i for i, n in enumerate(b.classes)}
    mask = np.array([ds.class_names[y] in known for y in ds.labels])
    if not mask.any():
        raise ValueError(f"none of the {ds.num_classes} classes of {dataset} is known to the bundle")
    truth = np.array([known[ds.class_names[y]] for y in ds.labels[mask]])
    images = ds.images[mask]
    pred = np.concatenate([b.predict(images[i : i + batch_size]).indices for i in range(0, len(images), batch_size)])
    return {"dataset": dataset, "split": split, "images": int(len(images)), "classes": int(len(set(truth.tolist()))),
            "top1": float(np.mean(pred == truth)), "skipped_unknown": int((~mask).sum())}


def compare_torch(b, run_dir: str | Path, threads: int | None = None, repeats: int = 30, batch_size: int = 32,
                  compile: bool = True, images=None) -> dict:
    """ONNX bundle vs the run's torch learner (eager, ``torch.compile``) on the same images, in this process.

    Both sides start from the same preprocessed float32 batch and end at the
    top-1 class (backbone + head); ``speedup_*`` is torch time / ONNX time
    (> 1: the bundle is faster). ``agreement`` is the share of images where
    both pick the same class. ``threads`` sets both torch's and onnxruntime's
    intra-op threads (the bundle ``b`` should have been loaded with the same).
    """
    import numpy as np
    import torch

    from runtime.benchmark import interleaved

    from ..rundir import load_run

    if threads:
        torch.set_num_threads(int(threads))
    _, learner = load_run(Path(run_dir))
    _, h, w = b.input_size
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8)
    x = b.preprocess(images[:batch_size])
    out: dict = {"run_dir": str(run_dir), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "onnx_threads": threads, "batch_sizes": {}}

    def onnx_fn(xb):
        return lambda: b._scores_preprocessed(xb).argmax(1)

    def torch_fn(fn, xt):
        def run():
            with torch.inference_mode():
                return fn(xt).argmax(1)
        return run

    compiled, compile_info = None, {"status": "disabled"}
    if compile:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(learner.logits, dynamic=False)
            with torch.inference_mode():
                for n in sorted({1, len(x)}):
                    compiled(torch.from_numpy(x[:n]))  # compiles (once per batch size)
            compile_info = {"status": "ok", "compile_s": time.perf_counter() - t0}
        except Exception as exc:  # noqa: BLE001 - inductor needs a C compiler and more; report why not
            compiled, compile_info = None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    out["torch_compile"] = compile_info
    with torch.inference_mode():
        ref = learner.logits(torch.from_numpy(x)).argmax(1).numpy()
    out["agreement"] = float(np.mean(ref == b._scores_preprocessed(x).argmax(1)[: len(ref)]))
    for n in sorted({1, len(x)}):
        xb, xt = x[:n], torch.from_numpy(x[:n])
        fns = {"onnx": onnx_fn(xb), "torch_eager": torch_fn(learner.logits, xt)}
        if compiled is not None:
            fns["torch_compile"] = torch_fn(compiled, xt)
        t = interleaved(fns, repeats if n == 1 else max(5, repeats // 3))
        row = {k: v for k, v in t.items()}
        # p50 ratios, and ratios of the fastest calls (less sensitive to other processes on the machine)
        row["speedup_vs_eager"] = t["torch_eager"]["p50_ms"] / t["onnx"]["p50_ms"]
        row["speedup_vs_eager_min"] = t["torch_eager"]["min_ms"] / t["onnx"]["min_ms"]
        if "torch_compile" in t:
            row["speedup_vs_compile"] = t["torch_compile"]["p50_ms"] / t["onnx"]["p50_ms"]
            row["speedup_vs_compile_min"] = t["torch_compile"]["min_ms"] / t["onnx"]["min_ms"]
        out["batch_sizes"][str(n)] = row
    return out


def _fmt(ms: float) -> str:
    return f"{ms:8.2f} ms"


def print_report(r: dict, echo=click.echo) -> None:
    d = r["device"]
    bs = [k for k in d if k.startswith("predict_b") and k != "predict_b1"][0]
    echo(f"{d['backbone']} ({d['precision']}) {d['input_size']}, {d['num_classes']} classes, on {d['device']} "
         f"({d['providers'][0]}), threads={d['threads'] or 'default'}")
    echo(f"  import runtime          {d['import_runtime_s'] * 1e3:8.1f} ms")
    echo(f"  cold start              {d['cold_start_s'] * 1e3:8.1f} ms  (load + first prediction; session {d['session_source']})")
    echo(f"  load cached / uncached  {d['load_cached_s'] * 1e3:8.1f} / {d['load_uncached_s'] * 1e3:.1f} ms")
    echo(f"  predict batch 1         {_fmt(d['predict_b1']['p50_ms'])} p50 {_fmt(d['predict_b1']['p95_ms'])} p95"
         f"  (backbone {d['embed_b1']['p50_ms']:.2f}, preprocess {d['preprocess_b1']['p50_ms']:.3f} ms)")
    echo(f"  predict batch {bs[9:]:<9} {_fmt(d[bs]['p50_ms'])} p50  -> {d['throughput_images_per_s']:.0f} images/s"
         f"  (preprocess {d['preprocess_' + bs[8:]]['p50_ms']:.2f} ms)")
    echo(f"  preprocess 480x640 frame{_fmt(d['preprocess_480x640_b1']['p50_ms'])}")
    echo(f"  peak RSS, batch 1       {d['peak_rss_batch1_mib']:8.1f} MiB  (target <= 2 x ONNX + 100 = {d['rss_target_mib']:.1f})")
    echo(f"  peak RSS, batch {d['batch_size']:<7d} {d['peak_rss_mib']:8.1f} MiB  (activations of the whole batch)")
    echo(f"  bundle on disk          {d['bundle_bytes'] / 2**20:8.2f} MiB  (ONNX {d['onnx_bytes'] / 2**20:.2f} MiB, "
         f"optimised-graph cache {d['cache_bytes'] / 2**20:.2f} MiB)")
    a = d["add_class"]
    echo(f"  add-class, {a['examples']} examples  {_fmt(a['total_ms'])}  = embedding {a['embed_ms']:.2f} + update "
         f"{a['update_ms']:.2f} ms (persisted; head update alone {a['head_update_ms']:.3f} ms)")
    if "accuracy" in r:
        acc = r["accuracy"]
        echo(f"  top-1 on {acc['dataset']} {acc['split']}  {100 * acc['top1']:.2f}% ({acc['images']} images, {acc['classes']} classes)")
    if "torch" in r:
        t = r["torch"]
        echo(f"  vs torch {t['torch']} (threads {t['torch_threads']}), same preprocessed images; top-1 agreement "
             f"{100 * t['agreement']:.1f}%; torch.compile: {t['torch_compile']['status']}")
        for n, row in t["batch_sizes"].items():
            line = f"    batch {n:>3}: onnx {row['onnx']['p50_ms']:.2f} ms, torch eager {row['torch_eager']['p50_ms']:.2f} ms " \
                   f"(x{row['speedup_vs_eager']:.2f} p50, x{row['speedup_vs_eager_min']:.2f} fastest calls)"
            if "torch_compile" in row:
                line += f", torch.compile {row['torch_compile']['p50_ms']:.2f} ms (x{row['speedup_vs_compile']:.2f})"
            echo(line)


@main.command()
@click.argument("bundle", type=click.Path())
@device_option
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: one per core).")
@click.option("--repeats", type=click.IntRange(min=3), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True, help="Batch for throughput.")
@click.option("--dataset", default=None, help="Data source (as for `train`) whose test split gives the accuracy.")
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--compare-torch", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Run directory of this bundle: time its torch learner (eager, torch.compile) on the same images.")
@click.option("--no-compile", is_flag=True, help="With --compare-torch: skip torch.compile.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file to write (default: bench-<bundle name>.json in the current directory).")
def bench(bundle, device, threads, repeats, batch_size, dataset, data_seed, run_dir, no_compile, out_path):
    """Cold start, latency, throughput, memory, size and add-class cost of BUNDLE on this machine."""
    from runtime.benchmark import machine

    b = load_bundle(bundle, device)  # validates the bundle before anything is timed
    result: dict = {"command": " ".join(["edgecl", *sys.argv[1:]]) if sys.argv else "edgecl bench",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    result["device"] = device_benchmark(bundle, device, threads, repeats, batch_size)
    if dataset or run_dir:
        from runtime import Bundle

        b = Bundle.load(bundle, device=device, threads=threads)
    if dataset:
        from ..data import DataError

        try:
            result["accuracy"] = bundle_accuracy(b, dataset, "test", data_seed)
        except (DataError, ValueError) as exc:
            fail(exc)
    if run_dir:
        result["torch"] = compare_torch(b, run_dir, threads or None, repeats, batch_size, compile=not no_compile)
    print_report(result)
    out = Path(out_path or f"bench-{Path(bundle).resolve().name}.json")
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(f"written to {out}")
