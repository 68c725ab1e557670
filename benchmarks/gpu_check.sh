#!/usr/bin/env bash
# The GPU check (issue 31, docs/gpu.md): one command that verifies the CUDA path on a machine with an
# NVIDIA GPU and writes one report.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default: benchmarks/results/gpu_check
#
# 1. refuses a machine without CUDA (exit 1, before writing anything): no working nvidia-smi, or an
#    onnxruntime that cannot run a session on its CUDAExecutionProvider (install edgecl-runtime[gpu]);
# 2. runs the `gpu` tests (pytest -m gpu tests/test_gpu.py, JUnit XML): CUDA inference, IO binding,
#    fp16 bundles, training on CUDA (that one needs a CUDA build of torch, else it is skipped);
# 3. trains the embedded shapes:30 SimpleCIL run (on CUDA when torch has it), exports it in fp32 and
#    fp16, and runs `edgecl bench --device cuda --dataset shapes:30` on both bundles;
# 4. writes OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.json: the command, the machine (GPU, driver,
#    torch, onnxruntime and its providers), every step, the test results and the bench numbers.
#
# Bounded by GPU_CHECK_BUDGET_S seconds (default 540: under 10 minutes; each step gets what is left,
# a step that no longer fits is reported as not run). Exit status: 0 every check ran and passed,
# 1 no CUDA or a check failed, 2 nothing failed but something was skipped or not run.
# Environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_KEEP_WORK=1 keeps the run and
# bundles (in a temporary directory otherwise removed); EDGECL_GPU_CHECK_DRY_RUN=1 runs the steps with
# --device cpu and no guard (tests the script itself on a machine without a GPU: not a GPU check).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/benchmarks/results/gpu_check}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
DRY_RUN="${EDGECL_GPU_CHECK_DRY_RUN:-0}"
COMMAND="bash benchmarks/gpu_check.sh${1:+ $1}"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || echo python3)"; fi

INSTALL_HINT="This check needs an NVIDIA GPU with its driver (nvidia-smi) and onnxruntime-gpu: pip install \
'edgecl-runtime[gpu]' (from this repository: pip install './runtime[gpu,image]') in place of [cpu], with the \
CUDA and cuDNN it was built for; training on CUDA also needs a CUDA build of torch. See docs/gpu.md."

no_cuda() {
    echo "gpu_check: no CUDA: $*" >&2
    echo "gpu_check: $INSTALL_HINT" >&2
    exit 1
}

# ----------------------------------------------------------------------------------- 1. guards
DEVICE=cuda
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    echo "gpu_check: EDGECL_GPU_CHECK_DRY_RUN=1: the steps run on the CPU without the CUDA guards (tests the script; not a GPU check)"
else
    command -v nvidia-smi >/dev/null 2>&1 || no_cuda "nvidia-smi is not on PATH (no NVIDIA driver on this machine)"
    GPUS="$(nvidia-smi -L 2>&1)" || no_cuda "nvidia-smi -L failed (no NVIDIA GPU, or its driver is not loaded): ${GPUS}"
    echo "gpu_check: ${GPUS}"
    PROBE="$("$PY" - 2>&1 <<'EOF'
import sys
try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:
    sys.exit(f"onnxruntime cannot be imported ({exc})")
available = ort.get_available_providers()
if "CUDAExecutionProvider" not in available:
    sys.exit(f"onnxruntime {ort.__version__} offers {available}, no CUDAExecutionProvider (the CPU build is installed)")
from onnx import TensorProto, helper
io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", io[:1], io[1:]),
                          opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
try:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    s.run(None, {"x": np.ones(2, np.float32)})
except Exception as exc:
    sys.exit(f"onnxruntime {ort.__version__} lists CUDAExecutionProvider but cannot run a session on it: {exc}")
if s.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit(f"onnxruntime {ort.__version__} lists CUDAExecutionProvider but fell back to {s.get_providers()} "
             "(CUDA/cuDNN libraries missing?)")
print(f"onnxruntime {ort.__version__} runs on CUDAExecutionProvider")
EOF
)" || no_cuda "$PROBE"
    echo "gpu_check: ${PROBE}"
fi

# ------------------------------------------------------------------------------------ set-up
mkdir -p "$OUT/logs" || exit 1
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgecl-gpu-check.XXXXXX")" || exit 1
if [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ]; then
    echo "gpu_check: work directory (kept): $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
export EDGECL_CACHE_DIR="$WORK/cache" EDGECL_TEST_CACHE_DIR="$WORK/cache"  # one pre-training for every step
STEPS="$OUT/logs/steps.tsv"
rm -f "$STEPS" "$OUT/junit.xml" "$OUT"/bench-*.json "$OUT"/export-*.json "$OUT/train.json" "$OUT"/logs/*.log
if [ -x "$(dirname "$PY")/edgecl" ]; then EDGECL=("$(dirname "$PY")/edgecl"); else EDGECL=("$PY" -m edgecl_runtime.cli); fi
cd "$ROOT" || exit 1

# step NAME CAP_S STDOUT_FILE CMD...: CMD with at most CAP_S seconds and no more than the budget left;
# its stdout to STDOUT_FILE (- : the log), stderr to logs/NAME.log; "name rc seconds" to steps.tsv
# (rc 124: timed out, -1: not run because the budget was spent).
step() {
    local name="$1" cap="$2" stdout="$3"; shift 3
    local left=$((BUDGET_S - SECONDS - 15))  # 15 s kept for the report
    [ "$cap" -gt "$left" ] && cap="$left"
    if [ "$cap" -lt 20 ]; then
        echo "gpu_check: $name: not run (time budget of ${BUDGET_S} s spent)"
        printf '%s\t-1\t0\n' "$name" >>"$STEPS"
        return 1
    fi
    [ "$stdout" = - ] && stdout="$OUT/logs/$name.log"
    echo "gpu_check: $name (at most ${cap} s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$cap" "$@" >>"$stdout" 2>>"$OUT/logs/$name.log"
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
    [ "$rc" = 124 ] && echo "gpu_check: $name timed out after ${cap} s"
    [ "$rc" = 0 ] || echo "gpu_check: $name failed (exit $rc): see $OUT/logs/$name.log"
    return "$rc"
}

# -------------------------------------------------------------------------------- 2. the machine
"$PY" - "$OUT/machine.json" "$DEVICE" >"$OUT/logs/machine.log" 2>&1 <<'EOF'
import json, platform, shutil, subprocess, sys
def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
m = {"python": platform.python_version(), "platform": platform.platform(), "device": sys.argv[2]}
if shutil.which("nvidia-smi"):
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    rows = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if rows is None:  # older drivers cannot report compute_cap
        fields = fields[:3]
        rows = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    m["gpus"] = [dict(zip(fields, [v.strip() for v in r.split(",")])) for r in (rows or "").splitlines() if r.strip()]
    m["cuda_driver"] = next((l.split("CUDA Version:")[1].split()[0] for l in (run(["nvidia-smi"]) or "").splitlines()
                             if "CUDA Version:" in l), None)
try:
    import onnxruntime as ort
    m["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers(), "device": ort.get_device()}
except Exception as exc:
    m["onnxruntime"] = {"error": str(exc)}
try:
    import torch
    t = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if t["cuda_available"]:
        t["device"] = torch.cuda.get_device_name(0)
        t["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        t["cudnn"] = torch.backends.cudnn.version()
    m["torch"] = t
except Exception as exc:
    m["torch"] = {"error": str(exc)}
m["commit"] = run(["git", "rev-parse", "HEAD"])
m["worktree_modified"] = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))
json.dump(m, open(sys.argv[1], "w"), indent=2)
print(json.dumps(m))
EOF
TRAIN_DEVICE="$("$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])).get("torch",{}); print("cuda" if t.get("cuda_available") else "cpu")' "$OUT/machine.json" 2>/dev/null || echo cpu)"
[ "$DRY_RUN" = 1 ] && TRAIN_DEVICE=cpu
[ "$TRAIN_DEVICE" = cpu ] && [ "$DRY_RUN" != 1 ] && \
    echo "gpu_check: torch has no CUDA here: the training test is skipped and the bench run trains on the CPU"

# ------------------------------------------------------------------------------ 3. the gpu tests
step pytest 360 - "$PY" -m pytest -m gpu tests/test_gpu.py -rs -p no:cacheprovider -o junit_family=xunit1 \
    --junitxml "$OUT/junit.xml"

# ------------------------------------------------------------ 4. fp32 and fp16 bundles, edgecl bench
if step train 240 "$OUT/train.json" "${EDGECL[@]}" train --dataset shapes:30 --device "$TRAIN_DEVICE" \
        --no-embedding-cache --out "$WORK/run" --force --json; then
    for precision in fp32 fp16; do
        step "export-$precision" 120 "$OUT/export-$precision.json" "${EDGECL[@]}" export "$WORK/run" \
            "$WORK/bundle-$precision" --precision "$precision" --force --json &&
        step "bench-$precision" 120 /dev/null "${EDGECL[@]}" bench "$WORK/bundle-$precision" --device "$DEVICE" \
            --dataset shapes:30 --json --out "$OUT/bench-$precision.json"
    done
fi

# -------------------------------------------------------------------------------------- 5. report
"$PY" - "$OUT" "$COMMAND" "$DRY_RUN" "$SECONDS" "$BUDGET_S" <<'EOF'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

out, command, dry, seconds, budget = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
load = lambda p: json.loads(p.read_text()) if p.is_file() and p.stat().st_size else None  # noqa: E731
steps = [dict(zip(("name", "rc", "seconds"), l.split("\t"))) for l in (out / "logs/steps.tsv").read_text().splitlines()] \
    if (out / "logs/steps.tsv").is_file() else []
for s in steps:
    s["rc"], s["seconds"] = int(s["rc"]), int(s["seconds"])
    s["status"] = {0: "ok", 124: "timed out", -1: "not run (time budget)"}.get(s["rc"], f"failed (exit {s['rc']})")
def num(v):
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return v


tests = []
if (out / "junit.xml").is_file():
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind], el.get("message", "")
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"test": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time") or 0), 2),
                      "message": message.strip(), "measured": props})
bench = {p: load(out / f"bench-{p}.json") for p in ("fp32", "fp16")}
export = {p: load(out / f"export-{p}.json") for p in ("fp32", "fp16")}
train = load(out / "train.json")
failed = [s["name"] for s in steps if s["rc"] not in (0, -1)] + [t["test"] for t in tests if t["outcome"] in ("failed", "error")]
incomplete = [s["name"] for s in steps if s["rc"] == -1] + [t["test"] for t in tests if t["outcome"] == "skipped"]
if not tests and "pytest" not in failed:
    failed.append("pytest (no test results)")
verdict = "failed" if failed else "dry run on the CPU: not a GPU check" if dry else "incomplete" if incomplete else "passed"
report = {"command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "verdict": verdict, "failed": failed,
          "skipped_or_not_run": incomplete, "seconds": seconds, "budget_seconds": budget,
          "machine": load(out / "machine.json"), "steps": steps, "tests": tests,
          "train": train and {"config": train.get("config"), "metrics": train.get("metrics")},
          "export": export, "bench": bench}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

m = report["machine"] or {}
ortv, tv = m.get("onnxruntime", {}), m.get("torch", {})
md = [f"# GPU check: {verdict}", "", f"`{command}` at {report['time']}, {seconds} s (budget {budget} s); "
      f"commit {m.get('commit')}{' (modified)' if m.get('worktree_modified') else ''}.", "", "## Machine", ""]
if not m.get("gpus"):
    md.append("* GPU: none found (nvidia-smi absent or silent)")
for g in m.get("gpus") or []:
    md.append(f"* GPU: {g.get('name')}, driver {g.get('driver_version')}, {g.get('memory.total')}"
              + (f", compute capability {g['compute_cap']}" if g.get("compute_cap") else ""))
md += [f"* CUDA (driver): {m.get('cuda_driver')}",
       f"* onnxruntime {ortv.get('version')}: {', '.join(ortv.get('providers', [])) or ortv.get('error')}",
       f"* torch {tv.get('version')} (CUDA {tv.get('cuda')}, available: {tv.get('cuda_available')}"
       + (f", {tv.get('device')}, capability {tv.get('capability')}, cuDNN {tv.get('cudnn')}" if tv.get("device") else "") + ")",
       f"* python {m.get('python')} on {m.get('platform')}", "", "## Steps", "", "| step | status | s |", "|---|---|---|"]
md += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in steps]
md += ["", "## Tests (`pytest -m gpu tests/test_gpu.py`)", "", "| test | outcome | s | measured / reason |", "|---|---|---|---|"]
for t in tests:
    detail = ", ".join(f"{k} {num(v)}" for k, v in t["measured"].items()) or t["message"].replace("|", "/")[:300]
    md.append(f"| {t['test']} | {t['outcome']} | {t['seconds']} | {detail} |")
md += ["", "## `edgecl bench --device " + ("cpu" if dry else "cuda") + " --dataset shapes:30`", ""]
rows = [("device (provider)", lambda d, r: f"{d['device']} ({d['providers'][0]})"),
        ("top-1 on shapes:30 test", lambda d, r: f"{100 * r['accuracy']['top1']:.2f}%" if r.get("accuracy") else "-"),
        ("cold start", lambda d, r: f"{d['cold_start_s'] * 1e3:.1f} ms"),
        ("predict batch 1, p50 / p95", lambda d, r: f"{d['predict_b1']['p50_ms']:.2f} / {d['predict_b1']['p95_ms']:.2f} ms"),
        ("backbone batch 1, p50", lambda d, r: f"{d['embed_b1']['p50_ms']:.2f} ms"),
        (f"predict batch {(bench['fp32'] or bench['fp16'] or {'device': {'batch_size': 32}})['device']['batch_size']}, p50",
         lambda d, r: f"{d['predict_b' + str(d['batch_size'])]['p50_ms']:.2f} ms"),
        ("throughput", lambda d, r: f"{d['throughput_images_per_s']:.0f} images/s"),
        ("add-class, 5 examples", lambda d, r: f"{d['add_class']['total_ms']:.2f} ms"),
        ("peak RSS", lambda d, r: f"{d['peak_rss_mib']:.0f} MiB"),
        ("ONNX file", lambda d, r: f"{d['onnx_bytes'] / 2**20:.2f} MiB")]
md += ["| | fp32 | fp16 |", "|---|---|---|"]
for label, fmt in rows:
    cells = []
    for p in ("fp32", "fp16"):
        r = bench[p]
        try:
            cells.append(fmt(r["device"], r) if r else "not run")
        except (KeyError, TypeError, IndexError):
            cells.append("-")
    md.append(f"| {label} | {cells[0]} | {cells[1]} |")
e16 = (export["fp16"] or {}).get("precision", {}).get("check")
if e16:
    md += ["", f"The fp16 export's own check (on the CPU): embedding cosine to fp32 min {e16['cosine_min']:.6f}, "
           f"top-1 agreement {e16.get('top1_agreement')}."]
if train:
    md += ["", f"Bench run: `edgecl train --dataset shapes:30 --device {train['config']['device']}`: last accuracy "
           f"{train['metrics']['last']:.2f}%."]
if failed or incomplete:
    md += ["", f"Failed: {', '.join(failed) or 'nothing'}. Skipped or not run: {', '.join(incomplete) or 'nothing'}.",
           "Logs: `logs/` next to this report."]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(1 if failed else 0 if dry or not incomplete else 2)
EOF
rc=$?
echo "gpu_check: report: $OUT/gpu_check.md, $OUT/gpu_check.json"
exit "$rc"
