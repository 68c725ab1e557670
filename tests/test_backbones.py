import numpy as np
import pytest
import torch

from edgecl._compat import import_timm
from edgecl.backbones import BackboneError
from edgecl.zoo import create_backbone
from edgecl.zoo.embedded import weights_path


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
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    path = tmp_path / "vit.safetensors"
    _save_checkpoint(src, path)
    bb = create_backbone("vit_tiny_patch16_224", weights=path, img_size=32)
    assert bb.spec.input_size == (3, 32, 32)
    got, want = bb.model.state_dict(), src.state_dict()
    expected_pos = timm.layers.resample_abs_pos_embed(want["pos_embed"], (2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(got["pos_embed"], expected_pos)  # 4x4 patch grid resampled to 2x2
    for k in want:
        if k != "pos_embed":
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    with pytest.raises(BackboneError, match="another shape"):  # vit_small: other width
        create_backbone("vit_small_patch16_224", weights=path, img_size=32)


def test_partial_checkpoint_is_refused_with_counts(tmp_path):
    """timm would load a 2-block ViT into a 12-block one with a warning and random blocks 2-11."""
    timm = import_timm()
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2)
    path = tmp_path / "vit2.safetensors"
    _save_checkpoint(src, path)
    with pytest.raises(BackboneError, match=r"120 of 150 model tensors missing from the file \(e\.g\. blocks\.2\..*0 unexpected"):
        create_backbone("vit_tiny_patch16_224", weights=path, img_size=32)


def test_mismatched_checkpoint_is_refused(tmp_path):
    """A file in another naming (here: a resnet renamed as a torch hub user might have it) fills nothing."""
    timm = import_timm()
    src = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    renamed = {"backbone." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(BackboneError) as err:
        create_backbone("resnet10t", weights=path)
    msg = str(err.value)
    n_model = len([k for k in src.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")])
    n_file = len(renamed)
    assert f"{n_model} of {n_model} model tensors missing" in msg and f"{n_file} unexpected" in msg
    assert "e.g. backbone.conv1.0.weight" in msg and "Known remaps" in msg
    # one extra tensor is refused too, and so is one missing tensor
    extra = dict(src.state_dict(), **{"stray.weight": torch.zeros(1)})
    torch.save(extra, path)
    with pytest.raises(BackboneError, match=r"0 of \d+ model tensors missing from the file, 1 unexpected \(e\.g\. stray\.weight\)"):
        create_backbone("resnet10t", weights=path)
    short = {k: v for k, v in src.state_dict().items() if k != "layer4.0.conv2.weight"}
    torch.save(short, path)
    with pytest.raises(BackboneError, match=r"1 of \d+ model tensors missing from the file \(e\.g\. layer4\.0\.conv2\.weight\)"):
        create_backbone("resnet10t", weights=path)
    # training checkpoints wrapping the state dict (and DDP 'module.' prefixes) still load
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    assert create_backbone("resnet10t", weights=path).spec.embedding_dim == 512


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        create_backbone("resnet10t", weights=path)


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
