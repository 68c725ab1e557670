"""The import contracts of pyproject.toml ([tool.importlinter]): layers only point down, no circles."""

from __future__ import annotations

import ast
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


def _layers() -> list[set[str]]:
    """The layers contract of pyproject.toml, highest first, each layer as its set of modules."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [{m.strip() for m in layer.replace("|", ":").split(":")} for layer in layers]


def test_every_training_package_has_a_layer():
    """A new module of edgecl must be placed in a layer, or the layers contract would not see its imports."""
    placed = set().union(*_layers())
    pkg = Path(edgecl.__file__).parent
    own = {f"edgecl.{p.stem}" for p in pkg.glob("*.py") if p.stem != "__init__"}
    own |= {f"edgecl.{p.parent.name}" for p in pkg.glob("*/__init__.py")}
    assert own - placed == set(), f"modules in no layer of [tool.importlinter]: {sorted(own - placed)}"


def test_only_the_workflows_and_the_cli_sit_above_export():
    """edgecl_export imports edgecl (onnx_graph, zoo, learners), so all of edgecl sits below it but what needs
    both: edgecl.workflows (export_run, the demo) and the CLI above that.
    No other module of edgecl imports edgecl_export, not even inside a function."""
    layers = _layers()
    export = next(i for i, layer in enumerate(layers) if "edgecl_export" in layer)
    assert set().union(*layers[:export]) == {"edgecl.cli", "edgecl.workflows"}
    pkg = Path(edgecl.__file__).parent
    importers = set()
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n.split(".")[0] == "edgecl_export" for n in names):
                importers.add(".".join(("edgecl", *path.relative_to(pkg).with_suffix("").parts)))
    assert importers and all(m.startswith(("edgecl.workflows.", "edgecl.cli.")) for m in importers), importers
