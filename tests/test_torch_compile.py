"""``torch.compile`` of a learner's exported computation (``edgecl.learners.scoring``) runs whole and agrees with eager.

Inductor takes tens of seconds per model on a 2-core CPU: the default suite compiles one representative
(RanPAC on a one-block random ViT, ~20 s); every learner kind is compiled under ``-m slow``.
"""

import numpy as np
import pytest
import torch

from edgecl.learners import create_learner
from edgecl.learners.scoring import scoring_module
from edgecl.onnx_graph import scaled_diff
from peft_helpers import small_vit, train_learner

TOL = 1e-4


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def fit(learner, classes: range, seed: int = 0):
    """One task of ``classes`` with 5 random images each (a list of batches: no data set needed)."""
    y = torch.tensor([c for c in classes for _ in range(5)])
    x = images(len(y), seed)
    learner.fit_task([(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)])
    return learner


def assert_compiles(learner, x: torch.Tensor, backend: str = "inductor") -> None:
    """The scoring module equals the learner's own scores, and its compiled graph (no graph break) equals it."""
    module = scoring_module(learner)
    torch._dynamo.reset()  # a fresh cache: every learner compiles the same ScoringModule.forward
    compiled = torch.compile(module, backend=backend, dynamic=False, fullgraph=True)
    with torch.inference_mode():
        ref, eager, out = learner.logits(x), module(x), compiled(x)
    assert eager.shape == ref.shape == (len(x), learner.num_classes)
    assert scaled_diff(eager.numpy(), ref.numpy()) <= TOL
    assert scaled_diff(out.numpy(), eager.numpy()) <= TOL


def test_ranpac_compiles_with_inductor_and_agrees_with_eager():
    torch.set_num_threads(1)
    learner = fit(create_learner("ranpac", small_vit(depth=1), M=128), range(4))
    state = {k: v.copy() for k, v in learner.state().items()}
    assert_compiles(learner, images(3, seed=1))
    assert all(np.array_equal(v, learner.state()[k]) for k, v in state.items())  # the learner's state is untouched


def test_scoring_module_follows_the_learner_after_it_learns():
    learner = fit(create_learner("ranpac", small_vit(depth=1), M=64), range(3))
    before = scoring_module(learner)
    fit(learner, range(3, 5), seed=2)
    x = images(3, seed=3)
    with torch.inference_mode():
        assert before(x).shape == (3, 3)  # a module holds the state it was built from
        after, ref = scoring_module(learner)(x), learner.logits(x)
    assert after.shape == (3, 5) and scaled_diff(after.numpy(), ref.numpy()) <= TOL


def _backbone(name: str):
    if name in ("proof", "zscl"):
        from clip_helpers import tiny_clip

        return tiny_clip()
    return small_vit(depth=5 if name in ("coda_prompt", "dualprompt") else 2)  # their prompts go into blocks 2-4


HPARAMS = {  # small and quick; learners without a training loop take none
    "promptfusion": {"epochs": 1, "second": "resnet10t", "second_weights": "random"},
    "proof": {"epochs": 1},
    "zscl": {"epochs": 1, "we_every": 2},
    "fecam": {},
    "ranpac": {"M": 128},
    "simplecil": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aper", "coda_prompt", "cofima", "dap", "dualprompt", "ease", "esn", "fecam", "l2p",
                                  "lae", "promptfusion", "proof", "ranpac", "simplecil", "slca", "vpt", "zscl"])
def test_every_learner_compiles_with_inductor(name):
    from edgecl.learners.registry import LEARNERS
    from edgecl.zoo import create_backbone

    assert name in LEARNERS
    torch.set_num_threads(1)
    torch.manual_seed(0)
    trained = train_learner(name, _backbone(name), classes=4, increment=2, backbones=create_backbone,
                            **HPARAMS.get(name, {"epochs": 1}))
    assert_compiles(trained.learner, images(3, seed=1))


def test_the_slow_test_covers_every_learner():
    from edgecl.learners.registry import LEARNERS

    params = next(m for m in test_every_learner_compiles_with_inductor.pytestmark if m.name == "parametrize")
    assert sorted(params.args[1]) == sorted(LEARNERS)


def _row(eager: float, compiled: float | None, onnx: float) -> dict:
    row = {"torch_eager": {"p50_ms": eager}, "onnx": {"p50_ms": onnx}, "speedup_vs_eager": eager / onnx}
    if compiled is not None:
        row.update(torch_compile={"p50_ms": compiled}, speedup_vs_compile=compiled / onnx)
    return row


def test_bench_prints_eager_compile_and_onnx_in_one_table():
    from edgecl_runtime.cli.bench import print_torch_table

    t = {"torch": "2.x", "torch_threads": 2, "agreement": 1.0, "onnx_precision": "int8",
         "torch_compile": {"status": "ok", "compile_s": 30.0, "max_abs_diff_vs_eager": 1e-6},
         "batch_sizes": {"1": _row(4.0, 3.0, 1.0), "32": _row(80.0, 60.0, 20.0)}}
    lines = []
    print_torch_table(t, lines.append)
    assert "torch eager" in lines[1] and "torch.compile" in lines[1] and "onnxruntime int8" in lines[1]
    assert lines[2].split()[:5] == ["batch", "1", "4.00", "3.00", "1.00"]
    assert lines[3].split()[-3:] == ["x4.00", "/", "x3.00"]
    t["torch_compile"], t["batch_sizes"] = {"status": "disabled"}, {"1": _row(4.0, None, 1.0)}
    lines.clear()
    print_torch_table(t, lines.append)
    assert "torch.compile: disabled" in lines[0] and lines[2].split()[3] == "-"


@pytest.mark.slow
def test_compare_torch_times_eager_compile_and_the_bundle(exported, trained):
    from edgecl.evaluation import compare_torch
    from edgecl_runtime import Bundle

    out = compare_torch(Bundle.load(exported[1], threads=1), trained[1], threads=1, repeats=3, batch_size=4)
    assert out["torch_compile"]["status"] == "ok" and out["torch_compile"]["max_abs_diff_vs_eager"] <= TOL
    assert out["agreement"] == 1.0 and out["onnx_precision"] == "fp32"
    assert set(out["batch_sizes"]) == {"1", "4"}
    assert {"onnx", "torch_eager", "torch_compile", "speedup_vs_compile"} <= set(out["batch_sizes"]["4"])
