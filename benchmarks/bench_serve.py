"""Prediction latency of `edgecl serve`'s page: the model on the server vs. in the browser (onnxruntime-web).

    python benchmarks/bench_serve.py BUNDLE [--n 30] [--size 224] [--out benchmarks/results/bench_serve.json]

Runs the server on a copy of BUNDLE and headless Chromium (as tests/test_serve_browser.py), uploads one
PNG image of ``--size`` pixels ``--n`` times in each mode and reads the time the page measured around one
prediction (``#latency``: decode + preprocess + model + head, plus the HTTP round trip in server mode).
``python`` is ``Bundle.predict`` on the same file in this process, for reference. Writes JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from edgecl_runtime import Bundle  # noqa: E402
from serve_browser import CHROMIUM, Page, chromium_driver, running_server  # noqa: E402


def page_latencies(page: Page, url: str, mode: str, image: Path, n: int) -> list[float]:
    page.open(f"{url}&mode={mode}")
    out = []
    for _ in range(n + 2):
        page.predict(image)
        out.append(float(page.attr("#latency", "data-ms")))
    return out[2:]  # the first runs warm up the session


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "min_ms": round(min(ms), 2), "n": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_serve.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        shutil.copytree(args.bundle, tmp / "bundle", ignore=shutil.ignore_patterns(".ort-cache", ".serve-thumbs"))
        image = tmp / "image.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)).save(image)
        bundle = Bundle.load(tmp / "bundle")
        py = []
        for _ in range(args.n + 2):
            t0 = time.perf_counter()
            bundle.predict(image, top_k=5)
            py.append((time.perf_counter() - t0) * 1000)
        results = {"python": summary(py[2:])}
        with running_server(tmp / "bundle") as server, chromium_driver() as driver:
            for mode in ("server", "browser"):
                results[mode] = summary(page_latencies(Page(driver, timeout=120), server.url, mode, image, args.n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    report = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "chromium": chromium},
        "bundle": {"input_size": bundle.input_size, "classes": len(bundle.classes), "model": bundle.info().get("backbone")},
        "image": f"{args.size}x{args.size} PNG", "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(f"| {m} | {r['median_ms']} | {r['p90_ms']} | {r['min_ms']} | {r['n']} |" for m, r in results.items())
    args.out.with_suffix(".md").write_text(
        f"# edgecl serve: prediction latency\n\n`{report['command']}` on {report['machine']['platform']}, "
        f"{report['machine']['cpus']} CPUs, {chromium}; bundle {report['bundle']}, image {report['image']}.\n\n"
        "| where the model runs | median ms | p90 ms | min ms | n |\n| --- | --- | --- | --- | --- |\n" + rows + "\n\n"
        "server: the page uploads the image and the server decodes, preprocesses and predicts (HTTP round trip "
        "included); browser: decode, preprocessing (JS port), onnxruntime-web (WebAssembly, 1 thread) and the "
        "head in the page; python: `Bundle.predict(path)` in one process.\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
