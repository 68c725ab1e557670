import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecl.cli import main
from tests.conftest import class_images

COMMANDS = ["train", "export", "predict", "add-class", "eval", "info", "bench", "demo", "learners"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_on_every_command(cmd):
    out = CliRunner().invoke(main, [cmd, "--help"])
    assert out.exit_code == 0 and "Usage:" in out.output


def test_pipeline_through_the_cli(tmp_path, shapes_new):
    r = CliRunner()
    run = tmp_path / "run"
    out = r.invoke(main, ["train", "--dataset", "shapes:20", "--init-cls", "10", "--increment", "5", "--out", str(run)])
    assert out.exit_code == 0, out.output
    assert "task 3/3" in out.output and "average incremental accuracy" in out.output
    out = r.invoke(main, ["export", str(run), str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert "max abs diff" in out.output
    out = r.invoke(main, ["info", str(tmp_path / "b")])
    assert out.exit_code == 0 and "checksums: ok" in out.output and "num_classes: 20" in out.output

    train, test = shapes_new
    q = class_images(test, "red-circle", 1)[0]
    Image.fromarray(q).save(tmp_path / "q.png")
    out = r.invoke(main, ["predict", str(tmp_path / "b"), str(tmp_path / "q.png"), "--top-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output.strip().splitlines()[-1])
    assert row["top_k"][0]["class"] == "red-circle" and len(row["top_k"]) == 2

    new = "white-star"
    np.save(tmp_path / "ex.npy", class_images(train, new, 5))
    out = r.invoke(main, ["add-class", str(tmp_path / "b"), new, str(tmp_path / "ex.npy")])
    assert out.exit_code == 0 and "added new class 'white-star'" in out.output and "21 classes" in out.output
    np.save(tmp_path / "q.npy", class_images(test, new, 4))
    out = r.invoke(main, ["predict", str(tmp_path / "b"), str(tmp_path / "q.npy")])
    assert out.output.count(new) >= 3

    out = r.invoke(main, ["eval", str(tmp_path / "b"), "--dataset", "shapes:25"])
    assert out.exit_code == 0, out.output
    assert "of 20 classes" in out.output and "unknown classes skipped" in out.output
    acc = float(out.output.split("top-1 ")[1].split("%")[0])
    assert acc > 80


def test_cli_errors_are_clear(tmp_path):
    r = CliRunner()
    out = r.invoke(main, ["info", str(tmp_path / "nope")])
    assert out.exit_code == 1 and "MissingFileError" in out.output and "not found" in out.output
    out = r.invoke(main, ["train", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert out.exit_code == 1 and "data source not found" in out.output
    out = r.invoke(main, ["train", "--backbone", "resnet10t", "--weights", "/no/such.pth", "--out", str(tmp_path / "r")])
    assert out.exit_code == 1 and "weights file not found" in out.output


def test_bad_image_file_for_add_class(exported, tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    out = CliRunner().invoke(main, ["add-class", str(exported[1]), "cat", str(tmp_path / "x.png")])
    assert out.exit_code == 1 and "cannot read image" in out.output
