"""Persisted add-class update time (after embedding) and store load time, per head kind and class count.

    python benchmarks/bench_update.py [--label after] [--repeats 40] [--dir /tmp] [--cases proto100,...]
                                      [--out benchmarks/results/bench_update.json]

Each case is a synthetic bundle (the tiny fixture backbone, a head of random
statistics with D = 512): prototypes at 100, 1,000 and 10,000 classes, RanPAC's
``ridge`` head with M = 2048 at 100 classes, FeCAM's ``gaussian`` at 100
classes. The update is ``edgecl_runtime.store.add_examples`` with 5 given embeddings
(lock, journal append + fsync, head update, whatever the store persists),
timed per call over ``--repeats`` new classes in one process, as
``Bundle.add_class`` runs it after embedding: wall time (``update_ms``) and
CPU time of the process (``update_cpu_ms``: on a shared machine, wall times of
anything longer than a few ms include waiting for the CPU, and the fsync waits
for the disk). ``load`` is
``edgecl_runtime.store.read_state(path)`` (what ``Bundle.load`` does besides creating
the onnxruntime session: every checksum, the journal chain, replay) after the
updates. ``append_fsync_ms``: appending 10 KB to a file + fsync in the same
directory, before and after the cases (the floor of any durable update there). Results go under ``--label`` in the JSON, so runs of two versions of
the runtime sit side by side (``PYTHONPATH=/copy/of/old/tree`` runs an older
runtime: this script puts the repository last on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLAS_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--blas-threads=")), "1")
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, BLAS_THREADS)

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

import numpy as np

import edgecl_runtime
from edgecl_runtime import store
from edgecl_runtime.heads import head_class
from edgecl_runtime.manifest import file_entry, seal
from edgecl_runtime.storage import json_bytes, npz_bytes

D = 512
FIXTURE = ROOT / "tests" / "fixtures" / "bundle-v2"
CASES = {  # name: (head kind, classes)
    "proto100": ("prototype_cosine", 100),
    "proto1000": ("prototype_cosine", 1000),
    "proto10000": ("prototype_cosine", 10000),
    "ridge100": ("ridge", 100),
    "gaussian100": ("gaussian", 100),
}


def synthetic_head(kind: str, classes: int, rng: np.random.Generator, m: int):
    if kind == "prototype_cosine":
        return head_class(kind)(rng.standard_normal((classes, D)).astype(np.float32), np.full(classes, 5, np.int64))
    if kind == "ridge":
        W_rand = rng.standard_normal((D, m)).astype(np.float32)
        emb = rng.standard_normal((4 * classes, D)).astype(np.float32)
        H = np.maximum(emb @ W_rand, 0).astype(np.float64)
        y = np.repeat(np.arange(classes), 4)
        Q = np.zeros((m, classes))
        np.add.at(Q.T, y, H)
        return head_class(kind)(H.T @ H, Q, 1000.0, np.full(classes, 4, np.int64), W_rand)
    if kind == "gaussian":
        z = rng.standard_normal((classes, 8, D))
        c = z - z.mean(axis=1, keepdims=True)
        scatter = np.einsum("cnd,cne->cde", c, c).astype(np.float32)
        return head_class(kind)(z.mean(axis=1), scatter, np.full(classes, 8, np.int64))
    raise ValueError(kind)


def make_bundle(d: Path, kind: str, classes: int, m: int) -> Path:
    """The fixture bundle with a synthetic D = 512 head of ``classes`` classes (a fresh export)."""
    shutil.copytree(FIXTURE, d)
    head = synthetic_head(kind, classes, np.random.default_rng(0), m)
    arrays = head.arrays()
    names = [f"class-{i:05d}" for i in range(classes)]
    (d / "head-000000.npz").write_bytes(npz_bytes(arrays))
    mf = json.loads((d / "manifest.json").read_text())
    mf["backbone"]["embedding_dim"] = D
    mf["classes"] = names
    mf.update(store.initial_fields(kind, "head-000000.npz", arrays, names, version=mf["format_version"]))
    mf["files"] = {mf["backbone"]["file"]: mf["files"][mf["backbone"]["file"]],
                   "head-000000.npz": file_entry(d / "head-000000.npz")}
    (d / "manifest.json").write_bytes(json_bytes(seal(mf)))
    return d


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3)


def run_case(root: Path, name: str, repeats: int, m: int) -> dict:
    kind, classes = CASES[name]
    t0 = time.perf_counter()
    d = make_bundle(root / name, kind, classes, m)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.read_state(d)
    load_fresh = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    times, cpu = [], []
    for i in range(repeats):
        emb = rng.standard_normal((5, D)).astype(np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        store.add_examples(d, f"new-{i:04d}", emb)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        st = store.read_state(d)
        loads.append(time.perf_counter() - t0)
    assert len(st.classes) == classes + repeats
    worst = {}
    if hasattr(store, "SNAPSHOT_EVERY"):  # a load that replays the most records a journal-first store lets lag
        while len(st.lagging) < store.SNAPSHOT_EVERY - 1:
            st, _ = store.add_examples(d, f"lag-{len(st.classes)}", rng.standard_normal((5, D)).astype(np.float32))
        t0 = time.perf_counter()
        assert len(store.read_state(d).lagging) == store.SNAPSHOT_EVERY - 1
        worst = {"load_replaying_max_records_ms": round((time.perf_counter() - t0) * 1e3, 1),
                 "records_replayed": store.SNAPSHOT_EVERY - 1}
    size = store.bundle_bytes(d)
    shutil.rmtree(d)
    return {
        "kind": kind, "classes": classes, "dim": D, **({"M": m} if kind == "ridge" else {}), "examples": 5,
        "updates": repeats,
        "update_ms": {"p50": pct(times, 50), "p95": pct(times, 95), "max": pct(times, 100),
                      "mean": round(float(np.mean(times)) * 1e3, 3), "first": round(times[0] * 1e3, 3)},
        "update_cpu_ms": {"p50": pct(cpu, 50), "p95": pct(cpu, 95)},  # CPU time: without preemption and I/O waits
        "load_fresh_ms": round(load_fresh * 1e3, 1),
        "load_after_updates_ms": round(float(np.median(loads)) * 1e3, 1),
        **worst,
        "bundle_bytes_after": size,
        "setup_s": round(setup, 1),
    }


def append_fsync_ms(root: Path, n: int = 30) -> dict:
    """The disk's floor for a journaled update: append 10 KB to a file and fsync it (p50/p95 ms)."""
    times = []
    with open(root / "fsync-probe", "ab") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 10240)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    (root / "fsync-probe").unlink()
    return {"p50": pct(times, 50), "p95": pct(times, 95)}


def machine(where: Path) -> dict:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())
    fs = subprocess.run(["df", "-T", str(where)], capture_output=True, text=True, check=False).stdout.split("\n")[-2:]
    return {"cpu": model, "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "numpy": np.__version__, "blas_threads": BLAS_THREADS, "platform": platform.platform(),
            "bundle_filesystem": " ".join(fs).split()[1] if fs and fs[0] else "?"}


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(Path(edgecl_runtime.__file__).parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "not a git checkout"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="current")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--ridge-m", type=int, default=2048)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--dir", default=None, help="where the bundles are made (default: the temp dir)")
    p.add_argument("--note", default="", help="e.g. that the machine was shared")
    p.add_argument("--blas-threads", default=BLAS_THREADS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_update.json"))
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-update-", dir=a.dir))
    results = {"append_fsync_ms_before": append_fsync_ms(root)}
    try:
        for name in a.cases.split(","):
            results[name] = run_case(root, name, a.repeats, a.ridge_m)
            print(name, json.dumps(results[name]), flush=True)
        results["append_fsync_ms_after"] = append_fsync_ms(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[a.label] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "runtime": str(Path(edgecl_runtime.__file__).parent), "commit": git_commit(),
        "snapshot_policy": {k: getattr(store, k) for k in ("SNAPSHOT_EVERY", "SNAPSHOT_BYTES") if hasattr(store, k)},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(Path(a.dir or tempfile.gettempdir())), "note": a.note,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc[a.label]["machine"]))
    print(f"wrote {out} [{a.label}]")


if __name__ == "__main__":
    main()
