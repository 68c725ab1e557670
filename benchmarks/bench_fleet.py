"""Fleet merge: N devices each add 10 classes to copies of one bundle; merge them all; time, peak memory, exactness.

    python benchmarks/bench_fleet.py [--sizes 10,100,1000] [--kinds prototype_cosine,ridge,gaussian]
                                     [--dim 64] [--dir /tmp] [--out benchmarks/results/bench_fleet.json]
    python benchmarks/bench_fleet.py --markdown   # re-write bench_fleet.md from bench_fleet.json

The base is a store-level format-3 bundle made without training: the tiny
fixture's ONNX file (never run here) and a head of ``--dim``-wide random
features (5 classes of 8 examples; ``ridge`` without a random projection,
M = D). Each device (a copy of the base; unchanged files are hard links, which
the store never writes in place) adds 10 classes with
``edgecl_runtime.store.add_examples``, 5 random embeddings each: 3 names of its
own and 7 drawn from a pool of 100 names shared by the fleet (so about
3 N + 100 classes in all, most shared names taught on many devices).

For each head kind and size, three processes: *setup* builds the fleet,
*merge* runs ``store.merge(base, devices, out)`` and reports its wall time and
peak RSS (``resource.getrusage``; ``rss_before_mib`` is the peak after the
imports, before merging), *check* compares the merged bundle with one device
that saw every example: for up to 100 devices a bundle that replays every
device's additions with ``store.add_examples`` (on disk, as a device does), at
every size the same updates replayed in memory with ``store.apply`` (the update
rule of ``add_examples``, without the disk; the on-disk replay at 1,000 devices
would rewrite a head of ~3,000 classes a few hundred times). Class lists and
example counts must be identical, statistics within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

import numpy as np

from edgecl_runtime import store
from edgecl_runtime.heads import head_class
from edgecl_runtime.journal import Record
from edgecl_runtime.manifest import file_entry, seal
from edgecl_runtime.storage import json_bytes

FIXTURE = ROOT / "tests" / "fixtures" / "bundle-v2"
BASE_CLASSES, PER_DEVICE, OWN, POOL, EXAMPLES = 5, 10, 3, 100, 5
HEAD = "head-000000.safetensors"


def empty_head(kind: str, dim: int):
    if kind == "ridge":
        return head_class(kind)(np.zeros((dim, dim)), np.zeros((dim, 0)), 1.0, np.zeros(0, np.int64))
    if kind == "gaussian":
        return head_class(kind).empty(dim)
    return head_class(kind)(np.zeros((0, dim), np.float32), np.zeros(0, np.int64))


def make_base(d: Path, kind: str, dim: int) -> Path:
    """A format-3 bundle with a ``kind`` head of ``BASE_CLASSES`` classes of random ``dim``-wide features."""
    d.mkdir(parents=True)
    shutil.copy(FIXTURE / "backbone.onnx", d / "model.onnx")
    rng = np.random.default_rng(0)
    head = empty_head(kind, dim)
    for _ in range(BASE_CLASSES):
        head = head.with_examples(None, rng.standard_normal((8, dim)).astype(np.float32))
    arrays = head.arrays()
    (d / HEAD).write_bytes(store.head_bytes(arrays, 3))
    m = json.loads((FIXTURE / "manifest.json").read_text())
    names = [f"base-{i}" for i in range(BASE_CLASSES)]
    backbone = {k: v for k, v in m["backbone"].items() if k != "file"}
    m.update(store.initial_fields(kind, HEAD, arrays, names, version=3))
    m.update(classes=names, backbone={**backbone, "embedding_dim": dim},
             model={"file": "model.onnx", "head_inputs": []},
             files={"model.onnx": file_entry(d / "model.onnx"), HEAD: file_entry(d / HEAD)})
    m.pop("checksum", None)
    (d / "manifest.json").write_bytes(json_bytes(seal(m)))
    return d


def device_updates(i: int, dim: int) -> list[tuple[str, np.ndarray]]:
    """Device ``i``'s 10 additions: ``OWN`` names of its own and the rest from the shared pool."""
    rng = np.random.default_rng(1000 + i)
    shared = [f"shared-{p:03d}" for p in rng.choice(POOL, PER_DEVICE - OWN, replace=False)]
    names = [f"dev{i:04d}-{j}" for j in range(OWN)] + shared
    order = rng.permutation(PER_DEVICE)
    return [(names[j], rng.standard_normal((EXAMPLES, dim)).astype(np.float32)) for j in order]


def stage_setup(root: Path, kind: str, n: int, dim: int) -> dict:
    t0 = time.perf_counter()
    base = make_base(root / "base", kind, dim)
    for i in range(n):
        d = root / f"dev{i:04d}"
        shutil.copytree(base, d, copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
        for name, emb in device_updates(i, dim):
            store.add_examples(d, name, emb)
    du = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=False).stdout.split()
    return {"setup_s": round(time.perf_counter() - t0, 1), "fleet_bytes": int(du[0]) if du else None}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def stage_merge(root: Path, n: int) -> dict:
    devices = [root / f"dev{i:04d}" for i in range(n)]
    before = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    st = store.merge(root / "base", devices, root / "out")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"merge_s": round(seconds, 3), "ms_per_device": round(seconds / n * 1e3, 2), "merge_cpu_s": round(cpu, 3),
            "cpu_ms_per_device": round(cpu / n * 1e3, 2),
            "rss_before_mib": before, "peak_rss_mib": peak_rss_mib(), "classes": len(st.classes),
            "updates_merged": len(store.history(root / "out")["updates"]), "out_bytes": store.bundle_bytes(root / "out")}


def replay_in_memory(root: Path, n: int, dim: int):
    """Head and classes of one device that applied every device's additions in turn (``store.apply``)."""
    st = store.read_state(root / "base")
    head, classes = st.head, list(st.classes)
    for i in range(n):
        for name, emb in device_updates(i, dim):
            head, classes = store.apply(head, classes, Record(0, "add", name, "0" * 16, "", emb))
    return head, classes


def replay_on_disk(root: Path, n: int, dim: int):
    one = shutil.copytree(root / "base", root / "one")
    for i in range(n):
        for name, emb in device_updates(i, dim):
            store.add_examples(one, name, emb)
    st = store.read_state(one)
    return st.head, st.classes


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of two arrays relative to the reference's largest magnitude."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(x - y).max(initial=0.0) / max(float(np.abs(y).max(initial=0.0)), 1e-300))


def compare(merged, classes, head, ref_classes) -> dict:
    """Identity of classes and counts, of every class's statistics, and the largest relative differences."""
    out = {"classes_identical": classes == ref_classes,
           "counts_identical": bool(np.array_equal(merged.counts, head.counts))}
    pairs = [(merged.class_statistics(c), head.class_statistics(c)) for c in range(len(classes))]
    out["class_statistics_bit_identical"] = all(np.array_equal(a[k], b[k]) for a, b in pairs for k in a)
    out["class_statistics_max_rel_diff"] = max((_rel(a[k], b[k]) for a, b in pairs for k in a), default=0.0)
    if hasattr(head, "G"):  # ridge: the shared Gram matrix and the solved weights
        out["gram_max_rel_diff"], out["weights_max_rel_diff"] = _rel(merged.G, head.G), _rel(merged.W, head.W)
    worst = max(v for k, v in out.items() if k.endswith("max_rel_diff"))
    out["exact_1e5"] = out["classes_identical"] and out["counts_identical"] and worst <= 1e-5
    return out


def stage_check(root: Path, n: int, dim: int, on_disk: bool) -> dict:
    st = store.read_state(root / "out", verify=True)
    t0 = time.perf_counter()
    head, classes = replay_in_memory(root, n, dim)
    result = {"in_memory_replay": {**compare(st.head, st.classes, head, classes),
                                   "replay_s": round(time.perf_counter() - t0, 1)}}
    if on_disk:
        t0 = time.perf_counter()
        head, classes = replay_on_disk(root, n, dim)
        result["one_device_bundle"] = {**compare(st.head, st.classes, head, classes),
                                       "replay_s": round(time.perf_counter() - t0, 1)}
    return result


def run_stage(stage: str, root: Path, kind: str, n: int, dim: int) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--root", str(root), "--kinds", kind, "--sizes", str(n),
           "--dim", str(dim)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{stage} {kind} {n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_stage(a) -> None:
    root, kind, n = Path(a.root), a.kinds, int(a.sizes)
    if a.stage == "setup":
        res = stage_setup(root, kind, n, a.dim)
    elif a.stage == "merge":
        res = stage_merge(root, n)
    else:
        res = stage_check(root, n, a.dim, on_disk=n <= 100)
    print(json.dumps(res))


def machine(where: Path) -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())
    fs = subprocess.run(["df", "-T", str(where)], capture_output=True, text=True, check=False).stdout.split("\n")
    return {"cpu": model, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "numpy": np.__version__, "blas_threads": os.environ["OMP_NUM_THREADS"],
            "platform": platform.platform(), "filesystem": fs[1].split()[1] if len(fs) > 1 and fs[1] else "?"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--kinds", default="prototype_cosine,ridge,gaussian")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dir", default=None, help="where the fleets are made (default: the temp dir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_fleet.json"))
    p.add_argument("--markdown", action="store_true", help="only re-write the markdown from the JSON at --out")
    p.add_argument("--stage", choices=["setup", "merge", "check"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        return one_stage(a)
    if a.markdown:
        Path(a.out).with_suffix(".md").write_text(markdown(json.loads(Path(a.out).read_text())))
        return None
    rows = []
    for kind in a.kinds.split(","):
        for n in map(int, a.sizes.split(",")):
            root = Path(tempfile.mkdtemp(prefix=f"fleet-{kind}-{n}-", dir=a.dir))
            try:
                row = {"kind": kind, "devices": n, "dim": a.dim}
                for stage in ("setup", "merge", "check"):
                    row.update(run_stage(stage, root, kind, n, a.dim))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {"command": " ".join(["python", *sys.argv]), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(Path(a.dir or tempfile.gettempdir())),
           "setup": {"base_classes": BASE_CLASSES, "classes_per_device": PER_DEVICE, "own_names": OWN,
                     "shared_pool": POOL, "examples_per_class": EXAMPLES},
           "rows": rows, "growth": growth(rows)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def growth(rows: list[dict]) -> dict:
    """Per kind, between the smallest and the largest fleet: how time and memory grew against the device count."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["devices"])
        lo, hi = rs[0], rs[-1]
        if lo is hi:
            continue
        out[kind] = {"devices_ratio": hi["devices"] / lo["devices"],
                     "time_ratio": round(hi["merge_s"] / lo["merge_s"], 1),
                     "cpu_time_ratio": round(hi["merge_cpu_s"] / lo["merge_cpu_s"], 1),
                     "ms_per_device": [r["ms_per_device"] for r in rs],
                     "cpu_ms_per_device": [r["cpu_ms_per_device"] for r in rs],
                     "merge_mib_ratio": round((hi["peak_rss_mib"] - hi["rss_before_mib"])
                                              / max(lo["peak_rss_mib"] - lo["rss_before_mib"], 0.1), 1)}
        g = out[kind]
        # linear: CPU time per device does not grow, memory grows no faster than the devices
        g["no_worse_than_linear"] = (max(g["cpu_ms_per_device"]) <= 1.5 * g["cpu_ms_per_device"][0]
                                     and g["merge_mib_ratio"] <= g["devices_ratio"])
    return out


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Fleet merge: time, peak memory and exactness against one device that saw everything", "",
             f"`{doc['command']}` at {doc['time']} on {m['cpu']} ({m['cores']} cores, load {m['load_average']}), "
             f"Python {m['python']}, numpy {m['numpy']}, {m['blas_threads']} BLAS thread, {m['filesystem']}.", "",
             "| head | devices | classes | updates | merge s (CPU s) | ms / device (CPU) | RSS before MiB "
             "| peak RSS MiB | out MiB | exact (1e-5) | per-class statistics | largest rel. diff | one device on disk |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        mem, disk = r["in_memory_replay"], r.get("one_device_bundle")
        worst = max(v for k, v in mem.items() if k.endswith("max_rel_diff"))
        disk_txt = "n/a" if disk is None else (
            ("exact" if disk["exact_1e5"] else "NOT exact")
            + (", bit-identical" if disk["class_statistics_bit_identical"] else ""))
        lines.append(f"| {r['kind']} | {r['devices']} | {r['classes']} | {r['updates_merged']} | {r['merge_s']} "
                     f"({r['merge_cpu_s']}) | {r['ms_per_device']} ({r['cpu_ms_per_device']}) | {r['rss_before_mib']} "
                     f"| {r['peak_rss_mib']} | {r['out_bytes'] / 2**20:.1f} | {'yes' if mem['exact_1e5'] else 'NO'} | "
                     f"{'bit-identical' if mem['class_statistics_bit_identical'] else 'differ'} | {worst:.1e} | {disk_txt} |")
    lines += ["", "*Exact (1e-5)*: identical class lists and example counts, and every statistic within 1e-5 of "
              "the reference (relative to the array's largest magnitude); *per-class statistics*: prototypes, "
              "Gaussian means and scatters, ridge feature sums (`Q` columns) compared bit for bit; the ridge Gram "
              "matrix and weights are shared by all classes and differ by rounding only (largest rel. diff). "
              "The reference is one device that applied every device's additions in turn, in memory "
              "(`store.apply`) at every size and on disk (`store.add_examples`) up to 100 devices. "
              "Wall times include waiting for the CPU on a shared machine (see the load average); "
              "CPU time is the process's own. *RSS before*: peak RSS after the imports, before merging.",
              "", "Growth from the smallest to the largest fleet (time and memory above the imports):", ""]
    for kind, g in doc["growth"].items():
        verdict = "no worse than linear" if g["no_worse_than_linear"] else "WORSE than linear"
        lines.append(f"- {kind}: {g['devices_ratio']:.0f}x the devices took {g['cpu_time_ratio']}x the CPU time "
                     f"({g['time_ratio']}x the wall time; CPU ms per device {g['cpu_ms_per_device']}, wall "
                     f"{g['ms_per_device']}) and {g['merge_mib_ratio']}x the memory above the imports: {verdict}.")
    lines += ["", "The time per device is flat: each device costs one read of its state (manifest, head and base "
              "checksums, journal) and one journal append, and the head is assembled once. The memory above the "
              "imports follows the merged head, which grows with the number of classes (about 3 per device here); "
              "for the Gaussian head (a 64 x 64 float32 scatter per class, 48 MiB at 3,105 classes) the peak comes "
              "from writing the head file: with tracemalloc at 200 devices (705 classes, 11 MiB of scatters) the "
              "merge held 13 MiB before the write (one copy: the accumulated scatters) and peaked at 58 MiB "
              "while `write_state` stacked and serialised the head (`tensors.to_bytes` builds the file in memory)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
