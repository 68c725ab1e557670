"""benchmarks/cil_table.py: merging result files into one table (``--merge``)."""

import importlib.util
import json
import sys

from tests.conftest import ROOT


def load_cil_table():
    spec = importlib.util.spec_from_file_location("cil_table", ROOT / "benchmarks" / "cil_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cil_table"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake_run(learner, seed, last):
    config = {"learner": learner, "learner_args": {}, "dataset": "glyphs:200", "order_seed": seed, "data_seed": 0,
              "train_per_class": 30, "test_per_class": 10}
    return {"config": config, "backbone": "vit", "protocol": "B0-Inc10", "classes_seen": [10, 20],
            "accuracy_per_task": [90.0, last], "average_incremental": (90 + last) / 2, "last": last,
            "forgetting": 1.0, "wall_time_s": 1.0, "backbone_spec": {"input_size": [3, 32, 32]}}


def report(name, learner, runs, note):
    machine = {"cpu": "x", "cores": 2, "torch_threads": 1, "versions": {"torch": "2"}}
    grid = {"learners": [learner], "backbones": ["vit"], "datasets": ["glyphs:200"], "protocols": ["B0-Inc10"],
            "seeds": sorted({r["config"]["order_seed"] for r in runs})}
    return {"name": name, "command": f"python cil_table.py --name {name}", "machine": machine, "grid": grid,
            "notes": [note], "runs": runs}


def test_merge_unites_grids_keeps_commands_and_drops_duplicate_runs(tmp_path):
    cil = load_cil_table()
    a = report("a", "ranpac", [fake_run("ranpac", 1993, 80.0), fake_run("ranpac", 1994, 82.0)], "note a")
    b = report("b", "l2p", [fake_run("l2p", 1993, 60.0)], "note b")
    b["runs"].append(fake_run("ranpac", 1993, 10.0))  # the same run as in a: a's wins
    for r in (a, b):
        (tmp_path / f"{r['name']}.json").write_text(json.dumps(r))
    assert cil.main(["--name", "ab", "--merge", "a,b", "--out", str(tmp_path), "--note", "merged"]) == 0
    ab = json.loads((tmp_path / "ab.json").read_text())
    assert ab["grid"]["learners"] == ["ranpac", "l2p"] and ab["grid"]["seeds"] == [1993, 1994]
    assert sorted(r["last"] for r in ab["runs"]) == [60.0, 80.0, 82.0]
    assert ab["notes"] == ["merged", "note a", "note b"]
    md = (tmp_path / "ab.md").read_text()
    assert "python cil_table.py --name a" in md and "python cil_table.py --name b" in md
    assert "| ranpac | vit | 32x32 | 85.50 ± 0.71 | 81.00 ± 1.41 |" in md
    assert (tmp_path / "ab.png").stat().st_size > 0
