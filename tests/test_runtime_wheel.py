"""The runtime ships alone: its wheel installs in a fresh venv without torch and runs a bundle there."""

import json
import subprocess
import sys
import venv

import pytest

from tests.conftest import ROOT

TRAINING_PACKAGES = {"torch", "timm", "onnx", "matplotlib", "torchvision", "edgecl"}

DEVICE_SCRIPT = """
import sys, numpy as np
from edgecl_runtime import Bundle
b = Bundle.load(sys.argv[1])
rng = np.random.default_rng(0)
imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
before = b.predict(imgs).labels
res = b.add_class("device-made", imgs[:3])
again = Bundle.load(sys.argv[1])
assert again.classes[-1] == "device-made" and res.num_classes == len(again.classes)
assert again.predict(imgs[:3]).labels == ["device-made"] * 3, again.predict(imgs[:3]).labels
bad = [m for m in ("torch", "timm", "onnx", "edgecl") if m in sys.modules]
assert not bad, bad
print(len(before), len(again.classes))
"""


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory):
    """A fresh venv with only the runtime wheel (and its [cpu,image] extras) installed."""
    import shutil

    root = tmp_path_factory.mktemp("device")
    src = shutil.copytree(ROOT / "runtime", root / "src",  # built from a copy: the build writes next to its sources
                          ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "node_modules"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         str(src)])
    wheel = next((root / "dist").glob("edgecl_runtime-*.whl"))
    venv.create(root / "venv", with_pip=True)
    py = root / "venv" / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[cpu,image]"])
    return py


def test_runtime_wheel_runs_a_bundle_without_training_packages(device_venv, exported, tmp_path):
    import shutil

    bundle = shutil.copytree(exported[1], tmp_path / "bundle")
    installed = {p["name"].lower() for p in json.loads(run([str(device_venv), "-m", "pip", "list", "--format", "json"]))}
    assert not installed & TRAINING_PACKAGES, installed & TRAINING_PACKAGES
    assert "onnxruntime" in installed and "numpy" in installed
    out = run([str(device_venv), "-c", DEVICE_SCRIPT, str(bundle)], cwd=tmp_path)  # cwd: not the source tree
    assert out.split() == ["6", str(exported[0].num_classes + 1)]


def test_runtime_cli_device_verbs_work_and_training_verbs_say_what_to_install(device_venv, exported, tmp_path):
    import shutil

    bundle = shutil.copytree(exported[1], tmp_path / "bundle")
    edgecl = device_venv.parent / "edgecl"
    info = json.loads(run([str(edgecl), "info", str(bundle), "--json"], cwd=tmp_path))
    assert info["format_version"] == 3 and info["model"] == "model.onnx"
    out = subprocess.run([str(edgecl), "train", "--out", "x"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1 and "pip install edgecl" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_runtime_without_onnxruntime_names_the_install_command(device_venv, exported, tmp_path):
    script = ("import builtins, sys\n"
              "real = builtins.__import__\n"
              "def block(name, *a, **k):\n"
              "    if name.startswith('onnxruntime'): raise ImportError(name)\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = block\n"
              "from edgecl_runtime import Bundle, MissingDependencyError\n"
              "try:\n"
              "    Bundle.load(sys.argv[1])\n"
              "except MissingDependencyError as e:\n"
              "    print(e)\n")
    out = run([str(device_venv), "-c", script, str(exported[1])], cwd=tmp_path)
    assert "edgecl-runtime[cpu]" in out and "edgecl-runtime[gpu]" in out
