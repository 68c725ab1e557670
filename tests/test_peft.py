"""PEFT modules on a frozen timm backbone: identity at init, only PEFT parameters train, ONNX parity."""

import numpy as np
import pytest
import torch

from edgecl.zoo import create_backbone
from edgecl.peft import PEFT_METHODS, ParallelEmbedding, PeftError, PeftModel, vit_pool, vit_tokens
from edgecl.onnx_graph import export_onnx, parity
from peft_helpers import small_vit

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vit():
    return small_vit(depth=2)


@pytest.fixture(scope="module")
def cnn():
    return create_backbone("mobilenetv2_100", weights="random", img_size=32)


def test_vit_stages_compose_to_the_timm_forward(vit):
    m = vit.model
    torch.testing.assert_close(vit_pool(m, m.blocks(vit_tokens(m, X))), vit(X), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["adapter", "ssf"])
def test_zero_init_leaves_the_vit_output_unchanged(vit, method):
    peft = PeftModel(vit.model, method)
    assert peft.peft_parameters()
    assert torch.equal(peft(X), vit(X))


def test_ssf_on_a_cnn_starts_as_the_identity_and_then_changes_it(cnn):
    peft = PeftModel(cnn.model, "ssf")
    assert torch.equal(peft(X), cnn(X))
    with torch.no_grad():
        peft.peft_parameters()[0].mul_(1.5)
    assert not torch.allclose(peft(X), cnn(X))


def test_vpt_prompts_change_the_output_not_its_shape(vit):
    for method, layers in (("vpt_shallow", 1), ("vpt_deep", len(vit.model.blocks))):
        peft = PeftModel(vit.model, method, prompt_length=3)
        (tokens,) = peft.peft_parameters()
        assert tokens.shape == (layers, 3, vit.embedding_dim)
        out = peft(X)
        assert out.shape == vit(X).shape and not torch.allclose(out, vit(X), atol=1e-3)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_only_peft_parameters_get_gradients_and_the_backbone_is_untouched(vit, method):
    before = {k: v.clone() for k, v in vit.model.state_dict().items()}
    peft = PeftModel(vit.model, method)
    peft(X).pow(2).sum().backward()
    trainable = {id(p) for p in peft.peft_parameters()}
    for name, p in peft.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert sum(p.grad.abs().sum() for p in peft.peft_parameters()) > 0
    # The original model: same modules, same keys, same values, no PEFT inside.
    assert vit.model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in vit.model.state_dict().items())
    assert not any("adapter" in n or "ssf" in n or "prompts" in n for n, _ in vit.model.named_modules())


def test_peft_state_round_trip_and_bad_state(vit):
    a = PeftModel(vit.model, "adapter", bottleneck=4, seed=1)
    with torch.no_grad():
        for p in a.peft_parameters():
            p.add_(torch.randn_like(p))
    b = PeftModel(vit.model, "adapter", bottleneck=4, seed=2)
    b.load_peft_state({k: v.numpy() for k, v in a.peft_state().items()})
    assert torch.equal(a(X), b(X))
    state = a.peft_state()
    state.pop(next(iter(state)))
    with pytest.raises(PeftError, match="missing"):
        b.load_peft_state(state)
    wrong = PeftModel(vit.model, "adapter", bottleneck=5).peft_state()
    with pytest.raises(PeftError, match="shapes"):
        b.load_peft_state(wrong)
    assert torch.equal(a(X), b(X))  # a failed load changed nothing


def test_unsupported_combinations_are_clear_errors(cnn, vit):
    for method in ("adapter", "vpt_shallow", "vpt_deep"):
        with pytest.raises(PeftError, match="needs a timm VisionTransformer.*ssf"):
            PeftModel(cnn.model, method)
    with pytest.raises(PeftError, match="unknown PEFT method 'lora'.*adapter, ssf"):
        PeftModel(vit.model, "lora")
    with pytest.raises(PeftError, match="bottleneck"):
        PeftModel(vit.model, "adapter", bottleneck=0)
    with pytest.raises(PeftError, match="prompt length"):
        PeftModel(vit.model, "vpt_deep", prompt_length=0)


def _perturbed(model, method, seed=0):
    peft = PeftModel(model, method, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # as if trained: away from the identity
        for p in peft.peft_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return peft


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_both_paths_export_in_one_onnx_graph_with_parity(vit, method, tmp_path):
    peft = _perturbed(vit.model, method)
    both = ParallelEmbedding(vit.model, [peft], include_base=True).eval()
    out = both(X)
    torch.testing.assert_close(out[:, : vit.embedding_dim], vit(X), rtol=0, atol=0)
    torch.testing.assert_close(out[:, vit.embedding_dim :], peft(X), rtol=0, atol=0)
    export_onnx(both, (3, 32, 32), tmp_path / "m.onnx", opset=18)
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert parity(both, tmp_path / "m.onnx", [x]) <= 1e-4
    # The frozen weights are stored once although both paths use them.
    frozen = sum(p.numel() for p in vit.model.parameters()) * 4
    assert (tmp_path / "m.onnx").stat().st_size < 1.3 * frozen
    # One patch-embedding Conv feeds both block stacks (SSF scales its output after it: the
    # exporter's common-subexpression pass merges the two identical Convs).
    import onnx

    assert sum(n.op_type == "Conv" for n in onnx.load(str(tmp_path / "m.onnx")).graph.node) == 1


def test_ssf_on_a_cnn_exports_with_parity(cnn, tmp_path):
    both = ParallelEmbedding(cnn.model, [_perturbed(cnn.model, "ssf")], include_base=True).eval()
    export_onnx(both, (3, 32, 32), tmp_path / "c.onnx", opset=17)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert parity(both, tmp_path / "c.onnx", [x]) <= 1e-4


def test_parallel_branches_share_one_patch_embedding(vit, tmp_path):
    """EASE-style: several adapter branches over one stem -> one patch-embedding Conv in the graph."""
    import onnx

    branches = [_perturbed(vit.model, "adapter", seed=s) for s in range(3)]
    par = ParallelEmbedding(vit.model, branches, include_base=False).eval()
    assert par(X).shape == (3, 3 * vit.embedding_dim)
    export_onnx(par, (3, 32, 32), tmp_path / "p.onnx")
    graph = onnx.load(str(tmp_path / "p.onnx")).graph
    assert sum(n.op_type == "Conv" for n in graph.node) == 1
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert parity(par, tmp_path / "p.onnx", [x]) <= 1e-4
