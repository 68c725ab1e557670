"""Backbones from the Hugging Face hub (edgecl.zoo.hub), offline: a hub cache built here in huggingface_hub's layout
(blobs, snapshots/<commit>, refs/main) with tiny random timm and open_clip models; nothing touches the network."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from edgecl.backbones import BackboneError, BackboneSpec
from edgecl.cli import main
from edgecl.zoo import backbone_from_run, create_backbone, weights_source

VIT_REPO = "timm/vit_tiny_patch16_224.edgecl_test"  # a timm repo: config.json + model.safetensors
TAGGED = "test_resnet.r160_in1k"  # timm's tagged name; its registry names the repo timm/test_resnet.r160_in1k
CLIP_REPO = "edgecl-test/tiny-clip"  # an open_clip repo: open_clip_config.json + open_clip_model.safetensors
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}


def write_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """``files`` as a snapshot of ``repo_id`` in huggingface_hub's cache layout; returns the snapshot folder. Blobs
    are named as the hub names them: weights (LFS) by their sha256, other files by their git blob sha1."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for d in (repo / "blobs", snapshot, repo / "refs"):
        d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(repo / "blobs" / blob, snapshot))
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def safetensors_bytes(state: dict, tmp: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "w.safetensors")
    return (tmp / "w.safetensors").read_bytes()


def timm_files(tmp: Path, arch: str, **kwargs) -> dict[str, bytes]:
    """config.json and model.safetensors as timm's ``save_for_hf`` writes them (random weights, with a head)."""
    from edgecl.backbones import timm_models

    timm = timm_models()  # first: edgecl's torchvision workaround before any timm import
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10, **kwargs)
    out = tmp / f"save-{arch}"
    save_for_hf(model, str(out), safe_serialization=True)
    return {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The files of the three repos (made once per module)."""
    from edgecl.clip.model import _open_clip_module

    tmp = tmp_path_factory.mktemp("hub-models")
    torch.manual_seed(0)
    clip = _open_clip_module("tiny", json.loads(json.dumps(CLIP_CONFIG["model_cfg"])))
    return {
        VIT_REPO: timm_files(tmp, "vit_tiny_patch16_224", img_size=32, depth=2),
        f"timm/{TAGGED}": {"model.safetensors": timm_files(tmp, "test_resnet")["model.safetensors"]},
        CLIP_REPO: {"open_clip_config.json": json.dumps(CLIP_CONFIG).encode(),
                    "open_clip_model.safetensors": safetensors_bytes(clip.state_dict(), tmp)},
    }


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, models) -> Path:
    """An offline Hugging Face cache holding the three repos (HF_HUB_OFFLINE=1, HF_HUB_CACHE in tmp_path)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once on import: any stray lookup stays here
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for repo_id, files in models.items():
        write_repo(cache, repo_id, files)
    return cache


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hub_timm_name_reads_config_and_records_the_revision(hub_cache, models):
    bb = create_backbone(f"hf-hub:{VIT_REPO}")
    spec = bb.spec
    assert spec.timm_name == "vit_tiny_patch16_224" and spec.model_kwargs["depth"] == 2
    assert spec.input_size == (3, 32, 32) and spec.mean == (0.5, 0.5, 0.5) and bb.embedding_dim == 192
    assert spec.weights == f"hf-hub:{VIT_REPO}@{COMMIT}"
    assert spec.weights_sha256 == sha256(models[VIT_REPO]["model.safetensors"])
    assert weights_source(spec) == {"sha256": spec.weights_sha256, "source": "hf-hub", "repo": VIT_REPO,
                                    "revision": COMMIT, "file": "model.safetensors"}
    assert str(hub_cache) not in json.dumps(spec.to_dict())
    rebuilt = backbone_from_run(BackboneSpec.from_dict(spec.to_dict()), bb.model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), bb(x))


def test_tagged_name_takes_timm_registry_preprocessing(hub_cache):
    spec = create_backbone(TAGGED).spec
    assert spec.timm_name == "test_resnet" and spec.input_size == (3, 160, 160)
    assert spec.weights == f"hf-hub:timm/{TAGGED}@{COMMIT}" and spec.notes["hub"]["repo"] == f"timm/{TAGGED}"
    assert create_backbone(TAGGED, img_size=48).spec.input_size == (3, 48, 48)
    with pytest.raises(BackboneError, match="no pretrained tag 'test_resnet.nope'; known: test_resnet.r160_in1k"):
        create_backbone("test_resnet.nope")


def test_missing_from_cache_offline_is_one_clear_error(hub_cache):
    with pytest.raises(BackboneError) as err:
        create_backbone("hf-hub:timm/not_cached_model")
    msg = str(err.value)
    assert "hf-hub:timm/not_cached_model is not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "`hf download timm/not_cached_model`" in msg and "--weights FILE" in msg
    out = CliRunner().invoke(main, ["train", "--backbone", "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                    "--out", str(hub_cache.parent / "run")])
    assert out.exit_code == 1 and "hf download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k" in out.output
    assert "Traceback" not in out.output


def test_misfit_and_corrupt_hub_files_are_refused(hub_cache, models):
    misfit = {"config.json": models[VIT_REPO]["config.json"],
              "model.safetensors": models[f"timm/{TAGGED}"]["model.safetensors"]}
    write_repo(hub_cache, "timm/misfit", misfit)
    with pytest.raises(BackboneError, match="does not fit timm model 'vit_tiny_patch16_224'"):
        create_backbone("hf-hub:timm/misfit")
    snapshot = write_repo(hub_cache, "timm/corrupt", models[VIT_REPO])
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")  # same size and name, other content
    with pytest.raises(BackboneError, match="in the Hugging Face cache is corrupt"):
        create_backbone("hf-hub:timm/corrupt")
    snapshot = write_repo(hub_cache, "timm/truncated", {"config.json": models[VIT_REPO]["config.json"]})
    (snapshot / "model.safetensors").write_bytes(models[VIT_REPO]["model.safetensors"][:1000])  # no link (Windows)
    with pytest.raises(BackboneError, match="cannot read weights file"):
        create_backbone("hf-hub:timm/truncated")
    with pytest.raises(BackboneError, match="brings its weights from the hub"):
        create_backbone(f"hf-hub:{VIT_REPO}", weights=str(blob))


def cli_pipeline(tmp_path: Path, cache: Path, backbone: str, *extra: str) -> dict:
    """train -> export -> predict through the CLI on 10 shapes classes; returns the bundle's manifest, after checking
    that neither it nor the run names a path of the hub ``cache``."""
    from edgecl.data import make_shapes

    r, run, bundle = CliRunner(), tmp_path / "run", tmp_path / "bundle"
    out = r.invoke(main, ["train", "--dataset", "shapes:10", "--init-cls", "5", "--increment", "5",
                          "--backbone", backbone, *extra, "--out", str(run)])
    assert out.exit_code == 0, out.output
    out = r.invoke(main, ["export", str(run), str(bundle)])
    assert out.exit_code == 0, out.output
    Image.fromarray(make_shapes(10, 1, 1, seed=5)[1].images[0]).save(tmp_path / "q.png")
    out = r.invoke(main, ["predict", str(bundle), str(tmp_path / "q.png"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["top_k"]
    text = (bundle / "manifest.json").read_text()
    for recorded in (text, (run / "run.json").read_text()):
        assert str(cache) not in recorded and "snapshots" not in recorded
    return json.loads(text)


@pytest.mark.parametrize("name, repo, extra", [(f"hf-hub:{VIT_REPO}", VIT_REPO, ()),
                                                (TAGGED, f"timm/{TAGGED}", ("--img-size", "32"))])
def test_train_export_predict_offline_from_the_hub_cache(hub_cache, models, tmp_path, name, repo, extra):
    manifest = cli_pipeline(tmp_path, hub_cache, name, *extra)
    assert manifest["backbone"]["name"] == name
    assert manifest["backbone"]["weights"] == {"sha256": sha256(models[repo]["model.safetensors"]),
                                               "source": "hf-hub", "repo": repo, "revision": COMMIT,
                                               "file": "model.safetensors"}


def test_open_clip_hub_name(hub_cache, models, tmp_path):
    from edgecl.clip.model import _open_clip_module

    name = f"hf-hub:{CLIP_REPO}"
    bb = create_backbone(name)
    clip = bb.clip
    assert bb.spec.notes == {"clip": name, "hub": {"repo": CLIP_REPO, "revision": COMMIT,
                                                   "file": "open_clip_model.safetensors"}}
    assert bb.spec.input_size == (3, 32, 32) and bb.spec.std == (0.25, 0.25, 0.25) and bb.embedding_dim == 32
    text = clip.text_features(["red circle", "blue square"])
    assert text.shape == (2, 32) and np.allclose(text.norm(dim=-1).numpy(), 1, atol=1e-5)
    new = json.loads(json.dumps(CLIP_CONFIG["model_cfg"]))
    torch.manual_seed(1)  # main moves on to other weights: a run is rebuilt from the commit it recorded
    write_repo(hub_cache, CLIP_REPO, {"open_clip_config.json": json.dumps(CLIP_CONFIG).encode(),
                                      "open_clip_model.safetensors": safetensors_bytes(
                                          _open_clip_module("tiny", new).state_dict(), tmp_path)}, commit="f" * 40)
    assert create_backbone(name).spec.notes["hub"]["revision"] == "f" * 40
    rebuilt = backbone_from_run(BackboneSpec.from_dict(bb.spec.to_dict()), bb.model.state_dict())
    assert torch.equal(rebuilt.clip.text_features(["red circle"]), text[:1])
    assert create_backbone(f"{name}@{COMMIT}").spec.weights == f"{name}@{COMMIT}"
    manifest = cli_pipeline(tmp_path, hub_cache, f"{name}@{COMMIT}", "--learner", "proof")  # PROOF needs .clip
    assert manifest["backbone"]["weights"] == {"sha256": sha256(models[CLIP_REPO]["open_clip_model.safetensors"]),
                                               "source": "hf-hub", "repo": CLIP_REPO, "revision": COMMIT,
                                               "file": "open_clip_model.safetensors"}
