"""Folding PEFT modules into the backbone's weights: folded network == network with the module."""

import pytest
import torch
from torch import nn

from edgecl.peft import SSF, Adapter, PeftError, PeftModel, WithSSF, fold_parallel_linear, fold_peft
from edgecl.peft.fold import fold_ssf
from peft_helpers import small_vit


def _perturb(peft: PeftModel, seed: int = 0) -> None:
    """Random SSF scales around 1 and shifts around 0 (a trained-looking module)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.peft_named_parameters().items():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_ssf_folds_into_linear_conv_and_layernorm():
    g = torch.Generator().manual_seed(1)
    for layer, x in [(nn.Linear(6, 5), torch.randn(4, 6, generator=g)),
                     (nn.Linear(6, 5, bias=False), torch.randn(4, 6, generator=g)),
                     (nn.Conv2d(3, 5, 3, padding=1, bias=False), torch.randn(2, 3, 7, 7, generator=g)),
                     (nn.LayerNorm(6), torch.randn(4, 6, generator=g))]:
        out_ch = layer.normalized_shape[0] if isinstance(layer, nn.LayerNorm) else layer.weight.shape[0]
        ssf = SSF(out_ch, channels_first=isinstance(layer, nn.Conv2d))
        with torch.no_grad():
            ssf.scale.copy_(torch.randn(out_ch, generator=g))
            ssf.shift.copy_(torch.randn(out_ch, generator=g))
        folded = fold_ssf(layer, ssf)
        assert type(folded) is type(layer)
        torch.testing.assert_close(folded(x), WithSSF(layer, ssf)(x), rtol=1e-5, atol=1e-5)


def test_folded_ssf_vit_equals_the_vit_with_its_modules():
    bb = small_vit()
    peft = PeftModel(bb.model, "ssf")
    _perturb(peft)
    folded = fold_peft(peft)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), peft(x), rtol=1e-4, atol=1e-5)
        assert (peft(x) - bb.model(x)).abs().max() > 1e-2  # the module really changes the network
    assert not any(isinstance(m, (SSF, WithSSF)) for m in folded.modules())
    n_params = sum(p.numel() for p in folded.parameters())
    assert n_params == sum(p.numel() for p in bb.model.parameters())  # the plain backbone's shape and size
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(folded.parameters(), bb.model.parameters()))
    assert not any(p.requires_grad for p in folded.parameters())


def test_folded_ssf_cnn_equals_the_cnn_with_its_modules():
    from edgecl._compat import import_timm

    torch.manual_seed(0)
    cnn = import_timm().create_model("mobilenetv2_050", pretrained=False, num_classes=0).eval()
    peft = PeftModel(cnn, "ssf")
    _perturb(peft, seed=3)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(fold_peft(peft)(x), peft(x), rtol=1e-4, atol=1e-5)


def test_linear_adapter_folds_and_relu_adapter_does_not():
    g = torch.Generator().manual_seed(5)
    linear = nn.Linear(8, 8)
    adapter = Adapter(8, 3, scale=0.5, generator=g)
    with torch.no_grad():
        adapter.up.weight.copy_(torch.randn(8, 3, generator=g))
        adapter.up.bias.copy_(torch.randn(8, generator=g))
        adapter.down.bias.copy_(torch.randn(3, generator=g))
    x = torch.randn(5, 8, generator=g)
    with pytest.raises(PeftError, match="non-linear adapter"):
        fold_parallel_linear(linear, adapter)  # the ReLU adapter edgecl trains
    adapter.act = nn.Identity()  # a linear adapter: LoRA's form
    folded = fold_parallel_linear(linear, adapter)
    torch.testing.assert_close(folded(x), linear(x) + adapter(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,reason", [("adapter", "ReLU"), ("vpt_deep", "extra tokens")])
def test_methods_that_do_not_fold_say_why(method, reason):
    with pytest.raises(PeftError, match=reason):
        fold_peft(PeftModel(small_vit().model, method))
