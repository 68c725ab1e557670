import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Embedded weights are made once per test session in a private cache (offline, like a fresh machine)."""
    if "EDGECL_TEST_CACHE_DIR" in os.environ:  # reuse between local runs
        os.environ["EDGECL_CACHE_DIR"] = os.environ["EDGECL_TEST_CACHE_DIR"]
    else:
        os.environ["EDGECL_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgecl-cache"))
    yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """SimpleCIL on 30 embedded shapes classes, B10-Inc10, saved as a run directory."""
    from edgecl.experiment import RunConfig, run_experiment

    run_dir = tmp_path_factory.mktemp("run") / "run"
    result = run_experiment(RunConfig(dataset="shapes:30"), out_dir=run_dir, log=lambda s: None)
    return result, run_dir


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    from edgecl.workflows import export_run

    _, run_dir = trained
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    report = export_run(run_dir, out)
    return report, out


@pytest.fixture
def bundle_dir(exported, tmp_path):
    """A private copy of the exported bundle that a test may modify."""
    dst = tmp_path / "bundle"
    # Without the optimised-graph cache other tests' loads of the shared bundle left behind.
    shutil.copytree(exported[1], dst, ignore=shutil.ignore_patterns(".ort-cache"))
    return dst


@pytest.fixture(scope="session")
def shapes_new():
    """Train/test images of all 100 shapes classes from another seed (classes 30+ are unseen)."""
    from edgecl.data import make_shapes

    return make_shapes(100, 5, 10, seed=123)


def class_images(ds, name, n=None):
    idx = np.nonzero(np.array(ds.class_names)[ds.labels] == name)[0]
    return ds.images[idx[:n] if n else idx]
