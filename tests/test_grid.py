"""edgecl.grid and benchmarks/cil_table.py --ray: a grid on a local Ray instance gives the serial grid's runs,
an interrupted grid resumes with only its missing runs, a failing run stops the grid with its error."""

import json

import pytest
import ray

from edgecl.grid import BackboneChoice, GridSpec, Protocol, RayExecutor, outcome, read_json, run_grid, write_json
from tests.test_cil_table import load_cil_table

# SimpleCIL and RanPAC on 20 generated shapes classes with the committed ViT: 2 learners x 2 seeds = 4 runs.
GRID = ["--learners", "simplecil,ranpac", "--learner-args", '{"ranpac": {"M": 256}}', "--backbones", "edgecl-vit-tiny",
        "--datasets", "shapes:20", "--protocols", "B0-Inc10", "--seeds", "1,2", "--train-per-class", "5",
        "--test-per-class", "5", "--threads", "1"]


def tiny_spec(**changes) -> GridSpec:
    fields = dict(learners=["simplecil", "ranpac"], backbones=[BackboneChoice("edgecl-vit-tiny")], datasets=["shapes:20"],
                  protocols=[Protocol.parse("B0-Inc10")], seeds=[1, 2], learner_args={"ranpac": {"M": 256}},
                  train_per_class=5, test_per_class=5)
    return GridSpec(**(fields | changes))


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray instance of 2 CPUs whose workers embed into their own (empty) cache directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECL_CACHE_DIR", str(tmp_path_factory.mktemp("ray-cache")))  # the workers inherit it
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory):
    """The tiny grid run serially through cil_table.py, with a cache of its own."""
    out = tmp_path_factory.mktemp("serial")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECL_CACHE_DIR", str(out / "cache"))
        assert load_cil_table().main(["--name", "serial", "--out", str(out), *GRID]) == 0
    report = read_json(out / "serial.json")
    assert report["executor"] == {"kind": "serial"} and len(report["runs"]) == 4
    return report["runs"]


class Interrupted(Exception):
    pass


def test_ray_grid_interrupted_then_resumed_equals_the_serial_grid(ray_local, serial_runs, tmp_path, capsys):
    cil = load_cil_table()
    out_json = tmp_path / "ray.json"

    def save_then_die(report):  # the grid is killed right after its second result is on disk
        write_json(report, out_json)
        if len(report["runs"]) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_grid(tiny_spec(), RayExecutor("local"), {"name": "ray"}, save=save_then_die, log=lambda s: None)
    partial = read_json(out_json)["runs"]
    assert len(partial) == 2

    capsys.readouterr()
    assert cil.main(["--name", "ray", "--out", str(tmp_path), "--resume", "--ray", "local", *GRID]) == 0
    log = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(": done before") for line in log) == 2
    assert sum(" avg-inc " in line for line in log) == 2  # only the two missing runs ran
    report = read_json(out_json)
    assert report["executor"]["kind"] == "ray" and report["executor"]["cluster_cpus"] == 2
    runs = report["runs"]
    assert [r for r in runs if r in partial] == partial  # the finished runs are kept as they were
    assert [outcome(r) for r in runs] == [outcome(r) for r in serial_runs]  # same configs, order and numbers
    assert len({json.dumps(r["accuracy_per_task"]) for r in runs}) > 1  # (the runs differ from each other)
    assert "Ray tasks (1 CPU(s) each, 2 CPUs on 1 node(s))" in (tmp_path / "ray.md").read_text()


def test_a_failing_run_stops_the_ray_grid_with_its_error(ray_local):
    spec = tiny_spec(learners=["simplecil", "no-such-learner"], learner_args={})
    with pytest.raises(ValueError, match="unknown learner 'no-such-learner'"):
        run_grid(spec, RayExecutor("local"), {"name": "bad"}, log=lambda s: None)


def test_ray_options_need_ray(tmp_path):
    with pytest.raises(SystemExit, match="need --ray"):
        load_cil_table().main(["--name", "x", "--out", str(tmp_path), "--cpus-per-run", "2", *GRID])


def test_concurrent_runs_on_one_cache_agree_on_the_auto_engine(tmp_path, monkeypatch):
    """Two extractors on one cache measuring ``auto`` at once: one measures, the other waits and takes its choice
    (else concurrent runs of a grid could embed with different engines, hence other numbers than a serial grid)."""
    import threading
    import time

    import numpy as np
    from torch import nn

    from edgecl.features import FeatureExtractor, extractor

    choices = iter(["onnx", "torch-fused"])
    calls = []

    def slow_pick(module, sample, threads=None):  # a measurement whose winner differs between calls
        calls.append(1)
        time.sleep(0.3)
        return next(choices), None, {}

    monkeypatch.setattr(extractor, "pick_engine", slow_pick)
    images = np.zeros((extractor.AUTO_MIN_IMAGES, 8, 8, 3), np.uint8)
    dataset = type("Split", (), {"images": images, "__len__": lambda self: len(images)})()
    module, kinds = nn.Linear(2, 2), []

    def choose():
        fx = FeatureExtractor((3, 8, 8), (0.5,) * 3, (0.5,) * 3, cache_dir=tmp_path, threads=1)
        kinds.append(fx.engine_kind(module, fx.state_key(module), dataset))

    threads = [threading.Thread(target=choose) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kinds == ["onnx", "onnx"] and len(calls) == 1
