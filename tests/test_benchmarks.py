"""Every benchmark script runs end to end at a tiny size and writes its report where --out says, never into
benchmarks/results (scripts that import the library drift with it; four had, unnoticed)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tests"))  # serve_browser

BENCH = ROOT / "benchmarks"
TINY_VIT = ["--backbone", "edgecl-vit-tiny"]
# script -> arguments; {o} is the output path in the test's directory, {w} a work directory
CASES = {
    "bench_fleet": ["--sizes", "3", "--out", "{o}.json"],
    "bench_gaussian_head": ["--classes", "10", "--repeats", "1", "--images", "8", "--out", "{o}"],
    "bench_proof_head": ["--classes", "10", "--images", "8", "--repeats", "1", "--out", "{o}"],
    "bench_scaling": ["--classes", "10", "--ridge-classes", "10", "--ridge-m", "64", "--repeats", "1", "--out", "{o}"],
    "bench_update": ["--repeats", "1", "--ridge-m", "64", "--out", "{o}.json"],
    "bench_two_pass": ["--batch-sizes", "1", "--repeats", "1", "--out", "{o}.json"],
    "esn_routing": ["--dataset", "shapes:10", "--protocol", "B5-Inc5", "--out", "{o}"],
    "prompt_device_classes": ["--dataset", "shapes:20", "--trained", "10", "--added", "2", "--epochs", "1",
                              "--out", "{o}.json"],
    "clip_zero_shot": ["--datasets", "shapes:10", "--out", "{o}"],
    "bench_runtime": ["--models", "resnet10t", "--repeats", "1", "--no-compile", "--dataset", "shapes:10",
                      "--init-cls", "5", "--increment", "5", "--out", "{o}", "--work", "{w}"],
    "bench_streaming": ["--classes", "10", "--train-per-class", "10", "--test-per-class", "5", "--scales", "1",
                        "--out", "{o}", "--workdir", "{w}"],
    "bench_cost": ["--learners", "simplecil", *TINY_VIT, "--dataset", "shapes:20", "--init-cls", "10",
                   "--increment", "5", "--repeats", "2", "--work", "{w}", "--out", "{o}"],
    "bench_footprint": ["--cases", "simplecil-vit-tiny", "--repeats", "3", "--work", "{w}", "--out", "{o}"],
    "accuracy_cost": ["--results", "cil-glyphs200-mix", "--cost", "cost-glyphs200-clip", "--out", "{o}"],
    "bench_training": ["--variants", "torch-nocache,cold,warm", "--dataset", "shapes:20", *TINY_VIT, "--img-size",
                       "32", "--init-cls", "10", "--increment", "5", "--images", "64", "--repeats", "1",
                       "--engine-backbones", "edgecl-vit-tiny", "--out", "{o}"],
    "distributed_parity": ["--nproc", "2", "--configs", "simplecil", "--out", "{o}"],
    "bench_grid_ray": ["--name", "smoke", "--learners", "simplecil", "--backbones", "edgecl-vit-tiny", "--datasets",
                       "shapes:20", "--protocols", "B10-Inc5", "--seeds", "1993", "--threads", "1",
                       "--ray-num-cpus", "2", "--out", "{o}"],
}
# Not here: cil_table and fault_matrix (their own tests), ease_scoring (test_ease), bench_serve (a browser: below).
# bench_training runs without its "before" variant (a git checkout of another commit).


def _results_state():
    return {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_script_runs_and_reports(script, tmp_path):
    before = _results_state()
    out, work = tmp_path / "out" / script, tmp_path / "work"
    args = [a.format(o=out, w=work) for a in CASES[script]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix in ("", ".json")]
    assert reports, f"{script} wrote no JSON report under {tmp_path / 'out'}"
    assert any(f"{script}.py" in json.dumps(r) for r in reports)  # the command is recorded with the results
    assert _results_state() == before  # the committed results are untouched


@pytest.mark.browser
def test_serve_benchmark_times_server_and_browser(exported, tmp_path):
    """benchmarks/bench_serve.py on the shared bundle: the page's own latency in both modes, in Chromium."""
    from serve_browser import CHROMEDRIVER, CHROMIUM

    if not (os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER)):
        pytest.skip("chromium / chromium-driver not installed (.ci/setup-system.sh)")
    before, out = _results_state(), tmp_path / "out" / "serve.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_serve.py"), str(exported[1]), "--n", "3", "--size", "64",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "bench_serve.py" in report["command"] and _results_state() == before
    results = report["results"]
    assert {"server", "browser", "python"} <= set(results)
    assert all(r["n"] == 3 and r["median_ms"] > 0 for r in results.values())  # every mode measured a latency
