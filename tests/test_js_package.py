"""The JS client as the npm package apps install (runtime/js, `edgecl-runtime`; issue 33): `npm pack` ships the
library, CLI and TypeScript declarations but no tests, its version follows the bundle format, and the example
app (examples/node-app), installed from the packed tarball like from the registry, predicts as Python does."""

import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from edgecl_runtime import Bundle
from edgecl_runtime.manifest import FORMAT_VERSION
from tests.conftest import ROOT, class_images
from tests.test_node_client import node_modules  # noqa: F401  (an autouse fixture: npm ci ran in runtime/js)

NODE, NPM = shutil.which("node"), shutil.which("npm")
JS = ROOT / "runtime" / "js"
APP = ROOT / "examples" / "node-app"
NPM_FLAGS = ["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", "--update-notifier=false"]

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node/npm are not installed: runtime/js cannot be packed (CI installs them)")


def npm(*args, cwd, timeout=300):
    proc = subprocess.run([NPM, *args, *NPM_FLAGS], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"npm {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(tarball path, packed file list, packed package.json) of `npm pack` in runtime/js."""
    out = tmp_path_factory.mktemp("pack")
    info = json.loads(npm("pack", "--json", "--pack-destination", str(out), cwd=JS, timeout=120))[0]
    tarball = out / info["filename"]
    with tarfile.open(tarball) as tar:
        meta = json.load(tar.extractfile("package/package.json"))
    return tarball, sorted(f["path"] for f in info["files"]), meta


def test_tarball_ships_the_library_and_types_but_no_tests(packed):
    _, files, meta = packed
    wanted = {"index.mjs", "index.d.ts", "node.d.ts", "cli.mjs", "lib/node.mjs", "README.md", "package.json"}
    assert wanted <= set(files)
    assert not [f for f in files if f.startswith("test/") or ".test." in f or f.startswith("node_modules/")]
    assert not [f for f in files if f.startswith(".npmrc") or f == "package-lock.json"]
    assert meta["name"] == "edgecl-runtime" and not meta.get("private")
    # the version rule (README): 0.<newest bundle format_version it reads>.<patch>
    assert meta["version"].split(".")[:2] == ["0", str(FORMAT_VERSION)]
    assert f"FORMAT_VERSIONS = [2, {FORMAT_VERSION}]" in (JS / "lib" / "bundle.mjs").read_text()
    # every file the exports map and bin name is in the tarball
    targets = [t for entry in meta["exports"].values() for t in ([entry] if isinstance(entry, str) else entry.values())]
    for path in [*targets, *meta["bin"].values(), meta["main"], meta["types"]]:
        assert path.removeprefix("./") in files, path


def test_example_app_installed_from_the_tarball_predicts_as_python(packed, bundle_dir, shapes_new, tmp_path):
    """examples/node-app imports `edgecl-runtime` by name; installed from the tarball (onnxruntime-node from the
    npm cache `npm ci` filled, else the registry) it prints the top-1 and unknown decision Python's predict gives."""
    tarball = packed[0]
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("node_modules", "package-lock.json"))
    try:
        npm("install", "--prefer-offline", str(tarball), cwd=app)
        py = Bundle.load(bundle_dir)
        test = shapes_new[1]
        seen = np.concatenate([class_images(test, c, 2) for c in py.classes[:4]])
        unseen = np.concatenate([class_images(test, c, 1) for c in test.class_names[90:94]])  # never taught
        files = [tmp_path / "seen.npy", tmp_path / "unseen.npy", tmp_path / "one.npy"]
        for f, x in zip(files, (seen, unseen, seen[0])):  # one.npy: a single (H, W, C) image
            np.save(f, x)
        proc = subprocess.run([NODE, "app.mjs", str(bundle_dir), *map(str, files)], cwd=app, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        images = np.concatenate([seen, unseen, seen[:1]])
        names = [f"{files[0]}[{i}]" for i in range(len(seen))] + [f"{files[1]}[{i}]" for i in range(len(unseen))]
        assert [r["image"] for r in rows] == [*names, str(files[2])]
        unknown = "auto" if (py.manifest.get("unknown") or {}).get("threshold") is not None else None
        pred = py.predict(images, top_k=3, unknown=unknown)
        assert [r["top_k"][0][0] for r in rows] == [row[0][0] for row in pred.top_k]
        assert [r["label"] for r in rows] == pred.labels
        np.testing.assert_allclose([r["unknown_score"] for r in rows], pred.unknown_scores, rtol=0, atol=1e-5)
        # errors are the package's error classes
        proc = subprocess.run([NODE, "app.mjs", str(tmp_path / "nothing"), str(files[0])], cwd=app, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and "MissingFileError" in proc.stderr
    finally:
        shutil.rmtree(app / "node_modules", ignore_errors=True)  # ~300 MB of onnxruntime-node
