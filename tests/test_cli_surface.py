"""The CLI seen from outside: --json on the reporting verbs, -q/-v, learners NAME, train --config,
the run directory's accuracy files, data generation progress; and the one manifest schema."""

import csv
import json
import math

import pytest
from click.testing import CliRunner

from edgecl.cli import main


def _run(args, ok=True):
    res = CliRunner().invoke(main, args)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _json(args) -> dict:
    return json.loads(_run(args).stdout)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A tiny run trained through the CLI with -q --json: (run dir, parsed stdout, stderr)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    res = _run(["-q", "train", "--dataset", "shapes:20", "--init-cls", "10", "--increment", "5", "--out", str(run),
                "--json"])
    return run, json.loads(res.stdout), res.stderr


def test_train_json_and_quiet(cli_run):
    run, out, stderr = cli_run
    assert stderr == ""  # -q: no progress bars, no log lines
    assert set(out) >= {"run_dir", "config", "class_order", "metrics", "files"}
    m = out["metrics"]
    assert len(m["per_task_overall"]) == 3 and len(m["accuracy_matrix"]) == 3
    assert m == json.loads((run / "run.json").read_text())["metrics"]
    assert out["config"]["increment"] == 5 and out["config"]["dataset"] == "shapes:20"


def test_run_dir_has_accuracy_csv_and_png(cli_run):
    run, out, _ = cli_run
    m = out["metrics"]
    rows = list(csv.DictReader((run / "accuracy.csv").open()))
    assert [int(r["task"]) for r in rows] == [1, 2, 3]
    assert [int(r["classes_seen"]) for r in rows] == [10, 15, 20]
    assert [float(r["top1_seen"]) for r in rows] == m["per_task_overall"]
    for t, r in enumerate(rows):
        for j in range(3):
            cell = r[f"task_{j + 1}"]
            if j <= t:
                assert math.isclose(float(cell), m["accuracy_matrix"][t][j])
            else:
                assert cell == ""
    png = (run / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_train_config_reproduces_and_overrides(cli_run, tmp_path):
    run, out, _ = cli_run
    again = _json(["-q", "train", "--config", str(run), "--out", str(tmp_path / "again"), "--json"])
    assert again["metrics"] == out["metrics"] and again["class_order"] == out["class_order"]
    assert again["config"] == out["config"]
    # an explicit option wins over the file; the rest comes from the file
    changed = _json(["-q", "train", "--config", str(run / "run.json"), "--increment", "10",
                     "--out", str(tmp_path / "changed"), "--json"])
    assert changed["config"]["increment"] == 10 and changed["config"]["dataset"] == "shapes:20"
    assert len(changed["metrics"]["per_task_overall"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "shapes:20", "no_such_key": 1}))
    res = _run(["train", "--config", str(bad), "--out", str(tmp_path / "x")], ok=False)
    assert res.exit_code == 1 and "no_such_key" in res.output


def test_quiet_prints_only_the_result_and_verbose_adds_debug(cli_run, tmp_path):
    run, _, _ = cli_run
    res = _run(["-q", "train", "--config", str(run), "--out", str(tmp_path / "q")])
    assert res.stderr == ""
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "average incremental accuracy" in lines[0]
    loud = _run(["-v", "train", "--config", str(run), "--out", str(tmp_path / "v")])
    assert "task 3/3" in loud.stderr and "edgecl.cli:" in loud.stderr  # debug format names the logger
    assert "task 3/3" not in loud.stdout
    assert _run(["-q", "-v", "learners"], ok=False).exit_code == 2


def test_learners_list_and_hyper_parameters():
    rows = _json(["learners", "--json"])["learners"]
    by_name = {r["name"]: r for r in rows}
    assert {"simplecil", "ranpac", "fecam", "l2p"} <= set(by_name)
    assert set(by_name["ranpac"]) == {"name", "summary", "head_kind", "hparams"} and "M" in by_name["ranpac"]["hparams"]
    ranpac = _json(["learners", "ranpac", "--json"])
    hp = {h["name"]: h for h in ranpac["hparams"]}
    assert hp["M"]["default"] == 2048 and hp["M"]["type"] == "int" and hp["M"]["meaning"]
    assert hp["first_session"]["choices"][0] == "none"
    assert all(h["meaning"] for h in ranpac["hparams"])
    l2p = {h["name"]: h for h in _json(["learners", "l2p", "--json"])["hparams"]}
    assert l2p["epochs"]["default"] == 3 and l2p["head"]["choices"] == ["linear", "prototype"]  # common defaults too
    assert _json(["learners", "simplecil", "--json"])["hparams"] == []
    text = _run(["learners", "fecam"]).stdout
    assert "beta = 0.5" in text and "Tukey" in text
    res = _run(["learners", "nope"], ok=False)
    assert res.exit_code == 2 and "available" in res.output


def test_backbones_json():
    rows = _json(["backbones", "--json"])["backbones"]
    assert {"edgecl-resnet10t", "edgecl-vit-tiny"} <= {r["name"] for r in rows}
    for r in rows:
        assert set(r) == {"name", "kind", "timm_name", "input_size", "weights", "source", "install"}
        assert len(r["input_size"]) == 3


def test_export_info_eval_add_class_bench_json(cli_run, tmp_path, shapes_new):
    run, _, _ = cli_run
    bundle = tmp_path / "b"
    exp = _json(["-q", "export", str(run), str(bundle), "--json"])
    assert exp["path"] == str(bundle) and exp["num_classes"] == 20 and exp["parity_max_abs_diff"] < 1e-4
    assert exp["precision"]["backbone"] == "fp32" and exp["signed_by"] is None
    info = _json(["info", str(bundle), "--json"])
    assert info["num_classes"] == 20 and info["checksums"] == "ok"
    ev = _json(["-q", "eval", str(bundle), "--dataset", "shapes:20", "--json"])
    assert set(ev) >= {"top1", "images", "classes"} and ev["classes"] == 20
    import numpy as np

    from tests.conftest import class_images

    train, _ = shapes_new
    name = train.class_names[50]  # not among the run's 20 classes
    np.save(tmp_path / "ex.npy", class_images(train, name, 5))
    added = _json(["add-class", str(bundle), name, str(tmp_path / "ex.npy"), "--json"])
    assert added == {**added, "class": name, "created": True, "examples_added": 5, "num_classes": 21}
    assert abs(added["seconds"] - added["embed_seconds"] - added["update_seconds"]) < 1e-6
    assert name in _json(["info", str(bundle), "--json"])["added_on_device"]
    bench = _json(["-q", "bench", str(bundle), "--repeats", "3", "--batch-size", "2", "--json"])
    assert set(bench) >= {"command", "time", "machine", "device"} and bench["device"]["num_classes"] == 21


def test_data_generation_shows_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path / "cache"))
    res = _run(["data", "preview", "glyphs:3", "--out", str(tmp_path / "g.png"), "--count", "4"])
    assert "generating glyphs3" in res.stderr and "images" in res.stderr and "glyphs:3" in res.stdout
    res = _run(["-q", "data", "preview", "glyphs:4", "--out", str(tmp_path / "h.png"), "--count", "4", "--json"])
    out = json.loads(res.stdout)  # generated too, silently
    assert res.stderr == "" and out["images"] == len(out["classes"]) == 4 and (tmp_path / "h.png").is_file()


def test_manifest_schema_one_table_for_writer_and_reader(exported):
    from edgecl_runtime.errors import CorruptBundleError
    from edgecl_runtime.manifest import check_fields, new_manifest, read_manifest, validate
    from edgecl_runtime.manifest_schema import rules

    read, written = rules(3), rules(3, writing=True)
    assert {f.path for f in read} < {f.path for f in written}
    assert "backbone.file" in {f.path for f in rules(2)} and "backbone.file" not in {f.path for f in read}
    manifest = read_manifest(exported[1])
    check_fields(manifest, written)  # an export writes every field of the schema
    sections = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "checksum")}
    assert new_manifest(sections)["checksum"]
    with pytest.raises(CorruptBundleError, match="'learner.hparams' is missing"):
        new_manifest({**sections, "learner": {"name": "x"}})
    with pytest.raises(CorruptBundleError, match="'precision.backbone'"):
        new_manifest({**sections, "precision": {"backbone": "int4", "head": "fp32"}})
    lean = {k: v for k, v in manifest.items() if k not in ("created", "learner", "export")}
    validate(lean, 3)  # what a reader needs is less than what a writer writes
