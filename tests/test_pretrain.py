"""edgecl.pretrain: recipe hash, hash-keyed atomic cache, training, determinism; the embedded ViT."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecl.backbones import BackboneError
from edgecl.zoo import create_backbone
from edgecl.zoo import embedded
from edgecl.pretrain import Recipe, cache_path, config_hash, ensure_pretrained, pretrain, read_metadata
from edgecl.pretrain import checkpoint as checkpoint_mod

TINY = Recipe(
    timm_name="vit_tiny_patch16_224",
    model_kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
    task="shapes-factors",
    task_kwargs={"holdout_size": 200},
    input_size=(3, 16, 16),
    steps=60,
    batch_size=32,
    lr=1e-2,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_hash_changes_with_every_field():
    base = config_hash(TINY)
    assert base == config_hash(Recipe.from_dict(TINY.to_dict()))  # stable through JSON
    changed = {
        "timm_name": "resnet10t", "model_kwargs": {**TINY.model_kwargs, "depth": 2}, "task": "glyphs",
        "task_kwargs": {"holdout_size": 201}, "input_size": (3, 20, 20), "mean": (0.4, 0.5, 0.5),
        "std": (0.5, 0.5, 0.6), "seed": 1, "steps": 61, "batch_size": 33, "lr": 1.1e-2, "weight_decay": 0.04,
        "warmup_frac": 0.2, "label_smoothing": 0.1, "clip_grad": 1.0, "data_seed": 7,
        "init": {"patch_embed": "edgecl-resnet10t"},
    }
    assert set(changed) == {f.name for f in dataclasses.fields(Recipe)}  # a new field must be tested here
    hashes = {config_hash(TINY.with_(**{k: v})) for k, v in changed.items()}
    assert len(hashes) == len(changed) and base not in hashes
    with pytest.raises(ValueError, match="warmup_frac"):
        TINY.with_(warmup_frac=1.5)
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_dict({**TINY.to_dict(), "typo": 1})


def test_recipe_init_loads_a_submodule_by_name(monkeypatch):
    from edgecl._compat import import_timm
    from edgecl.pretrain.trainer import apply_init, build_model, init_states

    assert "init" not in TINY.to_dict()  # recipes without it keep their hash (and cached / committed files)
    assert config_hash(embedded.EMBEDDED["edgecl-resnet10t"]) == "345a3892e618"
    recipe = TINY.with_(timm_name="edgecl_vit_tiny_r10t", init={"patch_embed.backbone": "cnn"},
                        model_kwargs={"img_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2})
    torch.manual_seed(1)
    cnn = import_timm().create_model("resnet10t", num_classes=0)
    with pytest.raises(ValueError, match="pass resolve="):
        init_states(recipe)  # the recipe names a backbone: pretrain cannot build it by itself
    states = init_states(recipe, resolve=lambda name: type("B", (), {"model": cnn})())
    model = build_model(recipe)
    assert not torch.equal(model.patch_embed.backbone.conv1[0].weight, cnn.conv1[0].weight)
    apply_init(model, states)
    stem = model.patch_embed.backbone.state_dict()
    assert stem and all(torch.equal(v, cnn.state_dict()[k]) for k, v in stem.items())
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 32)  # 2x2 tokens of the stride-8 stem
    with pytest.raises(ValueError, match="no submodule 'stem'"):
        apply_init(model, {"stem": cnn.state_dict()})
    with pytest.raises(ValueError, match="entries not found"):
        apply_init(model, {"patch_embed.backbone": {"conv1.0.weight": cnn.conv1[0].weight}})


def test_tiny_recipe_learns():
    a = pretrain(TINY, threads=1, log_every=10)
    losses = [h["loss"] for h in a.history]
    assert losses[-1] < 0.75 * losses[0], losses  # measured: 4.8 -> 2.9
    assert a.metrics["acc_colour"] > 0.5  # chance 0.1 on held-out images; measured 0.94


def test_same_recipe_gives_bit_identical_weights():
    short = TINY.with_(steps=8)
    # logging and held-out evaluation along the way do not change a bit
    sa = _state(pretrain(short, threads=1, log_every=2, eval_every=3, log=lambda s: None).model)
    sb = _state(pretrain(short, threads=1).model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    sc = _state(pretrain(short.with_(seed=1), threads=1).model)
    assert not torch.equal(sc["cls_token"], sa["cls_token"])
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored


def test_cache_keyed_by_hash_and_atomic(cache, monkeypatch):
    recipe = TINY.with_(steps=3)
    path = ensure_pretrained("tiny", recipe)
    assert path == cache / "backbones" / f"tiny-{config_hash(recipe)}.safetensors" == cache_path("tiny", recipe)
    meta = read_metadata(path)
    assert Recipe.from_dict(__import__("json").loads(meta["edgecl_recipe"])) == recipe
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(checkpoint_mod, "pretrain", lambda *a, **k: pytest.fail("cache hit expected"))
    assert ensure_pretrained("tiny", recipe) == path and path.stat().st_mtime_ns == mtime
    monkeypatch.undo()
    monkeypatch.setenv("EDGECL_CACHE_DIR", str(cache))

    # A crash while writing leaves neither a partial file under the final name nor a temp file.
    other = TINY.with_(steps=2)

    def crash(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        ensure_pretrained("tiny", other)
    assert sorted(p.name for p in (cache / "backbones").iterdir()) == [path.name]


def test_save_checkpoint_validates(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="safetensors"):
        checkpoint_mod.save_checkpoint(model, tmp_path / "w.pth", TINY)
    with pytest.raises(ValueError, match="dtype"):
        checkpoint_mod.save_checkpoint(model, tmp_path / "w.safetensors", TINY, dtype="int8")
    assert not list(tmp_path.iterdir())


def test_same_weights_give_the_same_file_bytes(tmp_path):
    # safetensors writes its metadata map in a varying order; the wall time is not in the file
    model = torch.nn.Linear(3, 2)
    files = [
        checkpoint_mod.save_checkpoint(model, tmp_path / f"w{i}.safetensors", TINY, {"loss": 1.5, "seconds": float(i)})
        for i in range(6)
    ]
    assert len({f.read_bytes() for f in files}) == 1
    meta = read_metadata(files[0])
    assert "seconds" not in meta["edgecl_metrics"] and "loss" in meta["edgecl_metrics"]


def test_cli_pretrain_writes_checkpoint_and_refuses_overwrite(tmp_path):
    from edgecl.cli import main

    out = tmp_path / "r.safetensors"
    runner = CliRunner()
    res = runner.invoke(main, ["pretrain", "--arch", "resnet10t", "--steps", "2", "--batch-size", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "final loss" in res.output and str(out) in res.output
    meta = read_metadata(out)
    assert __import__("json").loads(meta["edgecl_recipe"])["steps"] == 2
    before = out.read_bytes()
    res = runner.invoke(main, ["pretrain", "--arch", "resnet10t", "--steps", "2", "--out", str(out)])
    assert res.exit_code != 0 and "--force" in res.output and out.read_bytes() == before
    res = runner.invoke(main, ["pretrain", "--arch", "nope", "--out", str(tmp_path / "x.safetensors")])
    assert res.exit_code != 0 and "unknown recipe" in res.output
    res = runner.invoke(main, ["pretrain", "--arch", "resnet10t", "--out", str(tmp_path / "x.pth")])
    assert res.exit_code != 0 and ".safetensors" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]


# --- the committed embedded ViT -------------------------------------------------------------

needs_vit = pytest.mark.skipif(
    "edgecl-vit-tiny" not in embedded.SHIPPED, reason="edgecl-vit-tiny weights not committed yet"
)


@needs_vit
def test_embedded_vit_loads_committed_weights():
    bb = create_backbone("edgecl-vit-tiny")
    m = bb.model
    for attr in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm"):  # what prompt methods use
        assert hasattr(m, attr), attr
    assert m.global_pool == "token" and bb.spec.embedding_dim == 192 and bb.spec.input_size == (3, 32, 32)
    assert bb.spec.weights_sha256 == embedded.SHIPPED["edgecl-vit-tiny"]
    assert embedded.weights_path("edgecl-vit-tiny").parent == embedded.WEIGHTS_DIR
    from safetensors.torch import load_file

    stored = load_file(embedded.weights_path("edgecl-vit-tiny"))  # fp16 on disk, fp32 in the model
    state = m.state_dict()
    assert stored.keys() == state.keys() and all(torch.equal(state[k], stored[k].float()) for k in stored)


@needs_vit
def test_embedded_vit_refuses_tampered_weights(tmp_path, monkeypatch):
    src = embedded.weights_path("edgecl-vit-tiny")
    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path)
    dst = embedded.weights_path("edgecl-vit-tiny")
    data = bytearray(src.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    dst.write_bytes(bytes(data))
    with pytest.raises(BackboneError, match="sha256 .* expected .* modified"):
        create_backbone("edgecl-vit-tiny")
    dst.unlink()
    with pytest.raises(BackboneError, match="missing.*edgecl pretrain --arch edgecl-vit-tiny"):
        create_backbone("edgecl-vit-tiny")


@needs_vit
def test_embedded_vit_onnx_parity(tmp_path):
    from edgecl.onnx_graph import export_onnx, parity

    bb = create_backbone("edgecl-vit-tiny")
    path = tmp_path / "vit.onnx"
    export_onnx(bb, bb.spec.input_size, path)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((n, *bb.spec.input_size)).astype(np.float32) for n in (1, 5)]
    assert parity(bb, path, inputs) <= 1e-4


def test_glyphs_task_streams_fresh_labelled_batches():
    from edgecl.pretrain import make_task

    recipe = TINY.with_(task="glyphs", task_kwargs={"num_classes": 20}, steps=2, batch_size=8)
    task = make_task(recipe)
    assert task.heads == {"glyph": 20}
    batches = list(task.batches())
    assert len(batches) == 2
    (x0, y0), (x1, _) = batches
    assert x0.shape == (8, 16, 16, 3) and x0.dtype == np.uint8 and not np.array_equal(x0, x1)
    assert y0["glyph"].dtype == np.int64 and 0 <= y0["glyph"].min() and y0["glyph"].max() < 20
    hx, hy = task.holdout()
    assert hx.shape == (20, 16, 16, 3) and sorted(hy["glyph"]) == list(range(20))
    with pytest.raises(ValueError, match="bad task_kwargs"):
        make_task(recipe.with_(task_kwargs={"classes": 3}))


def test_probe_accuracies_on_separable_and_random_features():
    from edgecl.zoo.probe import ncm_accuracy, ridge_accuracy

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 5
    y_train, y_test = np.repeat(np.arange(5), 20), np.repeat(np.arange(5), 10)
    f_train = centres[y_train] + rng.standard_normal((100, 16))
    f_test = centres[y_test] + rng.standard_normal((50, 16))
    assert ncm_accuracy(f_train, y_train, f_test, y_test) == 1.0
    assert ridge_accuracy(f_train, y_train, f_test, y_test) == 1.0
    noise = rng.standard_normal((50, 16))  # features that carry no label: about chance (0.2)
    assert ncm_accuracy(f_train, y_train, noise, y_test) < 0.5
    assert ridge_accuracy(f_train, y_train, noise, y_test) < 0.5


def test_glyphs_task_with_teacher_distils(tmp_path):
    from edgecl.zoo import NAMED
    from edgecl.pretrain import make_task

    if NAMED["efficientnet-lite0-imagenet"].status() != "installed":
        pytest.skip("efficientnet-lite0-imagenet weights (edgecl[weights]) not installed")
    recipe = TINY.with_(
        task="glyphs", steps=3, batch_size=8,
        task_kwargs={"num_classes": 10, "teacher": "efficientnet-lite0-imagenet", "teacher_size": 32},
    )
    from edgecl.zoo import create_backbone

    task = make_task(recipe, create_backbone)
    assert task.targets == {"teacher": 1280}
    x, y = next(iter(task.batches()))
    assert y["teacher"].shape == (8, 1280) and y["teacher"].dtype == np.float32
    res = pretrain(recipe, threads=1, resolve=create_backbone)
    assert {"loss_teacher", "cos_teacher", "acc_glyph"} <= set(res.metrics)
    assert -1.0 <= res.metrics["cos_teacher"] <= 1.0
    again = _state(pretrain(recipe, threads=1, resolve=create_backbone).model)  # glyph stream and teacher are deterministic too
    assert all(torch.equal(v, again[k]) for k, v in _state(res.model).items())


def test_first_use_checkpoint_does_not_depend_on_the_callers_threads(cache):
    """The cache key is the recipe: a checkpoint made on first use trains on CACHE_THREADS whatever the caller set."""
    recipe = TINY.with_(steps=20)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = ensure_pretrained("tiny", recipe)
    finally:
        torch.set_num_threads(before)
    assert read_metadata(path)["edgecl_threads"] == str(checkpoint_mod.CACHE_THREADS) == "1"
    from safetensors.torch import load_file

    made = load_file(str(path))
    ref = _state(pretrain(recipe, threads=1).model)
    assert made.keys() == ref.keys() and all(torch.equal(made[k], ref[k]) for k in made)
