"""A run directory is replaced only on purpose, and whole: `train --force`, and a failed save keeps the old run."""

import errno
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl.cli import main
from edgecl.rundir import load_run, save_run

TRAIN = ["train", "--dataset", "shapes:10", "--init-cls", "5", "--increment", "5"]


def _digests(run_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    result = CliRunner().invoke(main, [*TRAIN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_train_refuses_an_out_that_holds_a_run_unless_forced(run_dir, tmp_path):
    before = _digests(run_dir)
    out = CliRunner().invoke(main, [*TRAIN, "--seed", "7", "--out", str(run_dir)])
    assert out.exit_code == 2 and "already holds a run" in out.output and "--force" in out.output
    assert _digests(run_dir) == before
    copy = tmp_path / "run"
    copy.mkdir()
    for name in before:
        (copy / name).write_bytes((run_dir / name).read_bytes())
    out = CliRunner().invoke(main, [*TRAIN, "--seed", "7", "--out", str(copy), "--force", "--json"])
    assert out.exit_code == 0, out.output
    run, _ = load_run(copy)
    assert run["config"]["order_seed"] == 7 and _digests(copy)["run.json"] != before["run.json"]


def test_a_save_that_fails_leaves_the_previous_run_whole(run_dir, monkeypatch):
    run, learner = load_run(run_dir)
    before = _digests(run_dir)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)  # the backbone is written, then the learner state fails
    with pytest.raises(OSError, match="No space"):
        save_run(run_dir, {**run["config"], "order_seed": 99}, learner, run["class_names"], {})
    assert _digests(run_dir) == before  # no temporary left, nothing replaced
    again, _ = load_run(run_dir)
    assert again["config"] == run["config"]
