"""The import contracts of pyproject.toml ([tool.importlinter]): layers only point down, no circles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import edgecl

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else (shutil.which("lint-imports") or "lint-imports")


def test_import_contracts_are_kept():
    """`lint-imports` fails on an upward import, an import circle, or the runtime importing training code."""
    out = subprocess.run([_lint_imports(), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_every_training_package_has_a_layer():
    """A new module of edgecl must be placed in a layer, or the layers contract would not see its imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    placed = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    pkg = Path(edgecl.__file__).parent
    own = {f"edgecl.{p.stem}" for p in pkg.glob("*.py") if p.stem != "__init__"}
    own |= {f"edgecl.{p.parent.name}" for p in pkg.glob("*/__init__.py")}
    assert own - placed == set(), f"modules in no layer of [tool.importlinter]: {sorted(own - placed)}"
