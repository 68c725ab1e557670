"""``edgecl bench``: what a bundle costs on this machine, optionally side by side with torch.

The device numbers (cold start, latency, throughput, peak RSS, add-class)
come from ``edgecl_runtime.benchmark`` run in a fresh subprocess that imports only
the runtime, so they are those of a device process. Accuracy (``--dataset``)
and the torch comparison (``--compare-torch``) run in this process; the
comparison times ONNX and torch in turn on the same preprocessed images
(``edgecl_runtime.benchmark.interleaved``), so that a busy machine slows both alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from .common import device_option, emit_json, json_option, load_bundle, load_plugin, log, main
from .device import bundle_accuracy


def device_benchmark(bundle: str | Path, device: str = "auto", threads: int | None = None, repeats: int = 50,
                     batch_size: int = 32) -> dict:
    """``edgecl_runtime.benchmark`` in a fresh interpreter (runtime only), plus ``import edgecl_runtime`` time."""
    from edgecl_runtime.benchmark import import_seconds

    cmd = [sys.executable, "-m", "edgecl_runtime.benchmark", str(Path(bundle).resolve()), "--device", device,
           "--repeats", str(repeats), "--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"device benchmark failed:\n{proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    result["import_runtime_s"] = import_seconds("edgecl_runtime")
    return result


def _fmt(ms: float) -> str:
    return f"{ms:8.2f} ms"


def print_report(r: dict, echo=click.echo) -> None:
    d = r["device"]
    bs = [k for k in d if k.startswith("predict_b") and k != "predict_b1"][0]
    echo(f"{d['backbone']} ({d['precision']}) {d['input_size']}, {d['num_classes']} classes, on {d['device']} "
         f"({d['providers'][0]}), threads={d['threads'] or 'default'}")
    echo(f"  import edgecl_runtime   {d['import_runtime_s'] * 1e3:8.1f} ms")
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
        print_torch_table(r["torch"], echo)


def print_torch_table(t: dict, echo=click.echo) -> None:
    """p50 of torch eager, torch.compile and onnxruntime per batch size, and the bundle's speed-up over each."""
    onnx = f"onnxruntime {t.get('onnx_precision', 'fp32')}"
    c = t["torch_compile"]
    status = (f"inductor, compiled in {c['compile_s']:.1f} s, max |compiled - eager| {c['max_abs_diff_vs_eager']:.1g}"
              if c["status"] == "ok" else c["status"] + (f" ({c['error']})" if "error" in c else ""))
    echo(f"  vs torch {t['torch']} (threads {t['torch_threads']}), same preprocessed images; top-1 agreement "
         f"{100 * t['agreement']:.1f}%; torch.compile: {status}")
    echo(f"    {'p50 ms':<10}{'torch eager':>13}{'torch.compile':>15}{onnx:>20}   {onnx} speed-up vs eager / compile")
    for n, row in t["batch_sizes"].items():
        comp = f"{row['torch_compile']['p50_ms']:15.2f}" if "torch_compile" in row else f"{'-':>15}"
        vs_comp = f"x{row['speedup_vs_compile']:.2f}" if "speedup_vs_compile" in row else "-"
        echo(f"    {'batch ' + n:<10}{row['torch_eager']['p50_ms']:13.2f}{comp}{row['onnx']['p50_ms']:20.2f}   "
             f"x{row['speedup_vs_eager']:.2f} / {vs_comp}")


@main.command()
@click.argument("bundle", type=click.Path())
@device_option
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: one per core).")
@click.option("--repeats", type=click.IntRange(min=3), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True, help="Batch for throughput.")
@click.option("--dataset", default=None, help="Data source (as for `train`) whose test split gives the accuracy.")
@click.option("--data-seed", type=int, default=0, show_default=True)
@click.option("--compare-torch", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Run directory of this bundle: time its torch learner (eager, torch.compile inductor) and the "
                   "bundle on the same images (p50, batch 1 and --batch-size).")
@click.option("--no-compile", is_flag=True, help="With --compare-torch: skip torch.compile.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file to write (default: bench-<bundle name>.json in the current directory; "
                   "with --json only when given).")
@json_option
def bench(bundle, device, threads, repeats, batch_size, dataset, data_seed, run_dir, no_compile, out_path, as_json):
    """Cold start, latency, throughput, memory, size and add-class cost of BUNDLE on this machine.

    The device numbers come from a fresh process that imports only the
    runtime. --dataset adds the top-1 accuracy on a data set's test split;
    --compare-torch RUN_DIR times the run's torch learner on the same images
    (needs the training distribution). The report is printed and saved as
    JSON (--out); with --json the JSON goes to stdout instead.
    """
    from edgecl_runtime.benchmark import machine

    b = load_bundle(bundle, device)  # validates the bundle before anything is timed
    result: dict = {"command": " ".join(["edgecl", *sys.argv[1:]]) if sys.argv else "edgecl bench",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    result["device"] = device_benchmark(bundle, device, threads, repeats, batch_size)
    if dataset or run_dir:
        from edgecl_runtime import Bundle

        b = Bundle.load(bundle, device=device, threads=threads)
    if dataset:
        result["accuracy"] = bundle_accuracy(b, dataset, "test", data_seed)
    if run_dir:
        compare_torch = load_plugin("compare_torch", "--compare-torch")
        result["torch"] = compare_torch(b, run_dir, threads or None, repeats, batch_size, compile=not no_compile)
    if out_path or not as_json:
        out = Path(out_path or f"bench-{Path(bundle).resolve().name}.json")
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log.info(f"written to {out}")
    if as_json:
        return emit_json(result)
    print_report(result)
