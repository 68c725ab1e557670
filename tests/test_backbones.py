import numpy as np
import pytest
import torch

from edgecl._compat import import_timm
from edgecl.backbones import BackboneError, create_backbone
from edgecl.backbones.embedded import weights_path


def _save_checkpoint(model, path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_through_timm(tmp_path, suffix):
    timm = import_timm()
    torch.manual_seed(3)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=7)  # has a classifier: dropped on load
    path = tmp_path / f"w{suffix}"
    _save_checkpoint(src, path)
    bb = create_backbone("resnet10t", weights=path, img_size=48)
    assert bb.spec.weights_sha256 and bb.spec.input_size == (3, 48, 48)
    x = torch.randn(2, 3, 48, 48)
    src.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), src.eval()(x))
    assert not any(p.requires_grad for p in bb.parameters())


def test_vit_weights_resampled_to_new_img_size(tmp_path):
    timm = import_timm()
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=2)
    path = tmp_path / "vit.safetensors"
    _save_checkpoint(src, path)
    bb = create_backbone("vit_tiny_patch16_224", weights=path, img_size=32)
    with pytest.raises(BackboneError):  # depth 12 expected by the plain name: blocks missing
        create_backbone("vit_small_patch16_224", weights=path, img_size=32)
    assert bb.spec.input_size == (3, 32, 32)


def test_vit_with_matching_kwargs(tmp_path):
    timm = import_timm()
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    path = tmp_path / "vit.safetensors"
    _save_checkpoint(src, path)
    bb = create_backbone("vit_tiny_patch16_224", weights=path, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), src.eval()(x))


def test_clear_errors():
    with pytest.raises(BackboneError, match="weights file not found: .*nope.safetensors"):
        create_backbone("resnet10t", weights="/nonexistent/nope.safetensors")
    with pytest.raises(BackboneError, match="no weights"):
        create_backbone("resnet10t")
    with pytest.raises(BackboneError, match="unknown timm model"):
        create_backbone("resnet_does_not_exist", weights="random")
    with pytest.raises(BackboneError, match="own weights"):
        create_backbone("edgecl-resnet10t", weights="x.pth")


def test_embedded_default_is_cached_and_offline():
    a = create_backbone()
    assert weights_path("edgecl-resnet10t").is_file()
    b = create_backbone()  # second call: cache hit, same weights
    assert a.spec.weights_sha256 == b.spec.weights_sha256
    assert a.spec.embedding_dim == 512 and a.spec.input_size == (3, 32, 32)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
