"""Training under torch.distributed: 2 processes on gloo equal 1 process (edgecl.distributed, docs/distributed.md).

One torchrun launch (``python -m torch.distributed.run``, 2 ranks) runs every configuration through
``tests/distributed_runs.py``; the same configurations run in this process; the saved learner states
must agree: closed-form statistics and heads to 1e-5 (relative to the array's largest value), the
gradient-trained parts (DDP) to ``GRADIENT_RTOL``.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_runs.py")
CLOSED_FORM_RTOL = 1e-5
GRADIENT_RTOL = 1e-4  # DDP vs one process, fixed seeds (docs/distributed.md): adapters, SSF, slow learner
PROMPT_RTOL = 5e-3  # prompt pools (Adam at lr 0.01): one process differs from itself by 1e-3 across BLAS threads
SMALL = {"dataset": "shapes:10", "init_cls": 5, "increment": 5, "train_per_class": 16, "test_per_class": 5,
         "engine": "torch"}

CLOSED_FORM = {
    "simplecil": {"learner": "simplecil"},
    "fecam": {"learner": "fecam"},
    # 64 fitting rows per task: <= M gathers the rows for lambda, > M reduces fit/validation statistics
    "ranpac-gather": {"learner": "ranpac", "learner_args": {"M": 128}},
    "ranpac-reduced": {"learner": "ranpac", "learner_args": {"M": 32}},
}
GRADIENT = {
    "aper-ssf": {"learner": "aper", "learner_args": {"peft": "ssf", "epochs": 1}},
    "slca": {"learner": "slca", "learner_args": {"epochs": 1}},
}
SLOW = {
    "ranpac-default": {"learner": "ranpac"},
    "ease-vit": {"learner": "ease", "backbone": "edgecl-vit-tiny", "learner_args": {"epochs": 1}},
    "aper-adapter-vit": {"learner": "aper", "backbone": "edgecl-vit-tiny", "learner_args": {"epochs": 1}},
    "ranpac-ssf": {"learner": "ranpac", "learner_args": {"first_session": "ssf", "adapt_epochs": 1}},
    "slca-2ep": {"learner": "slca", "learner_args": {"epochs": 2}},
    "l2p": {"learner": "l2p", "backbone": "edgecl-vit-tiny", "learner_args": {"epochs": 1}},
    "dualprompt-prototype": {"learner": "dualprompt", "backbone": "edgecl-vit-tiny",
                             "learner_args": {"epochs": 1, "head": "prototype"}},
    "coda_prompt": {"learner": "coda_prompt", "backbone": "edgecl-vit-tiny", "learner_args": {"epochs": 1}},
}
SLOW_RTOL = {"ranpac-default": CLOSED_FORM_RTOL, "l2p": PROMPT_RTOL, "dualprompt-prototype": PROMPT_RTOL,
             "coda_prompt": PROMPT_RTOL}


def _configs(names: dict) -> dict:
    return {name: {**SMALL, **fields} for name, fields in names.items()}


def _torchrun(out: Path, configs: dict, *extra: str, env: dict | None = None, timeout: float = 300):
    spec = out.with_suffix(".json")
    spec.write_text(json.dumps(configs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(out), str(spec), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _single(out: Path, configs: dict) -> None:
    import torch

    from edgecl.experiment import RunConfig, run_experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, fields in configs.items():
            run_experiment(RunConfig(**fields), out_dir=out / name, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)


def _runs(tmp: Path, names: dict) -> tuple[Path, Path]:
    configs = _configs(names)
    _single(tmp / "one", configs)  # first: fills the test cache (embedded backbone) the ranks then read
    proc = _torchrun(tmp / "two", configs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "one", tmp / "two"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("dist"), {**CLOSED_FORM, **GRADIENT})


def _compare(one: Path, two: Path, name: str, rtol: float) -> dict:
    a, b = np.load(one / name / "learner_state.npz"), np.load(two / name / "learner_state.npz")
    assert sorted(a) == sorted(b)
    worst = {}
    for key in a:
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        assert x.shape == y.shape, key
        scale = max(float(np.abs(x).max(initial=0.0)), 1e-12)
        worst[key] = float(np.abs(x - y).max(initial=0.0)) / scale
        assert worst[key] <= rtol, (name, key, worst[key])
    return worst


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_closed_form_statistics_equal_one_process(runs, name):
    one, two = runs
    worst = _compare(one, two, name, CLOSED_FORM_RTOL)
    assert worst["counts"] == 0.0
    assert json.loads((two / name / "run.json").read_text())["metrics"] == \
        json.loads((one / name / "run.json").read_text())["metrics"]  # the sharded evaluation: same predictions


def test_ranpac_lambda_identical(runs):
    one, two = runs
    for name in ("ranpac-gather", "ranpac-reduced"):
        lams = [float(np.load(run / name / "learner_state.npz")["lam"]) for run in (one, two)]
        assert lams[0] == lams[1], (name, lams)


@pytest.mark.parametrize("name", sorted(GRADIENT))
def test_gradient_trained_within_tolerance(runs, name):
    one, two = runs
    worst = _compare(one, two, name, GRADIENT_RTOL)
    assert worst["counts"] == 0.0
    if name == "aper-ssf":  # the DDP run really trained: SSF shifts start at zero
        state = np.load(two / name / "learner_state.npz")
        assert min(np.abs(state[k]).max() for k in state if k.endswith("ssf.shift")) > 0


def test_only_rank0_writes(runs, tmp_path):
    _, two = runs
    assert sorted(p.name for p in two.iterdir()) == sorted({**CLOSED_FORM, **GRADIENT})


def test_failure_on_one_rank_does_not_hang(tmp_path):
    start = time.monotonic()
    proc = _torchrun(tmp_path / "out", _configs({"simplecil": CLOSED_FORM["simplecil"]}), "--fail-rank", "1",
                     env={"EDGECL_DIST_TIMEOUT": "30"}, timeout=120)
    assert proc.returncode != 0
    assert "injected failure" in proc.stderr
    assert time.monotonic() - start < 90
    assert not (tmp_path / "out").exists()


def test_train_command_prints_its_summary_once(tmp_path):
    """`torchrun --nproc-per-node 2 --no-python edgecl train ...`: rank 0 alone prints the result line."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_configs({"simplecil": CLOSED_FORM["simplecil"]})["simplecil"]))
    edgecl = Path(sys.executable).with_name("edgecl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
           str(edgecl if edgecl.exists() else "edgecl"), "train", "--config", str(config), "--threads", "1",
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if "average incremental accuracy" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'run'}: "), proc.stdout


def test_learner_without_hooks_is_refused(monkeypatch):
    from edgecl import distributed

    distributed.check_learner("my-plugin-learner")  # one process: anything goes
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    distributed.check_learner("ranpac")
    with pytest.raises(distributed.DistributedError, match="does not train under torch.distributed yet"):
        distributed.check_learner("my-plugin-learner")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_variants(tmp_path_factory, name):
    one, two = _runs(tmp_path_factory.mktemp(f"dist-{name}"), {name: SLOW[name]})
    _compare(one, two, name, SLOW_RTOL.get(name, GRADIENT_RTOL))


def test_gaussian_moments_merge_equals_examples():
    """What FeCAM's reduction feeds the head: moments of a batch merge like the batch's examples."""
    from edgecl_runtime.errors import InvalidInputError
    from edgecl_runtime.heads.gaussian import GaussianHead, tukey

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 6)), rng.standard_normal((5, 6))
    head = GaussianHead.empty(6).with_examples(None, a)
    z = tukey(b, head.beta)
    mean = z.mean(axis=0)
    outer = z.T @ z - len(z) * np.outer(mean, mean)  # from summed moments, as the ranks reduce them
    for index in (None, 0):
        want, got = head.with_examples(index, b), head.with_moments(index, len(b), mean, outer)
        np.testing.assert_allclose(got.means, want.means, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.scatter, want.scatter, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.counts, want.counts)
    with pytest.raises(InvalidInputError):
        head.with_moments(0, 0, mean, outer)


def test_without_process_group_the_hooks_are_the_single_process_computation():
    import torch

    from edgecl import distributed

    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    order = np.array([5, 2, 9])
    assert distributed.local_rows(order).tolist() == [5, 2, 9]
    feats, labels = torch.arange(12.0).reshape(4, 3), torch.tensor([0, 1, 1, 2])
    sums, counts = distributed.class_sums(feats, labels, 4)
    assert counts.tolist() == [1, 2, 1, 0]
    assert torch.equal(sums[1], feats[1:3].double().sum(0))
    with pytest.raises(ValueError, match="no training samples"):
        distributed.class_sums(feats[:0], labels[:0], 0)
