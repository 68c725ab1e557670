"""The embedded tiny CLIP (edgecl.clip, edgecl.zoo.clip, edgecl.pretrain.clip): tokenizer, strict loading,
pre-training determinism, zero-shot above chance, text-tower ONNX parity."""

import os
import unicodedata

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgecl.clip import TINY, ClipError, from_config, load
from edgecl.clip.zeroshot import class_text, zero_shot
from edgecl.pretrain.clip import _encode_text, emoji_codepoints, fit_prototype_map, info_nce, pretrain_clip
from edgecl.zoo import CLIP_MODELS, create_backbone, load_clip
from edgecl.zoo.clip import RECIPE, text_state
from edgecl_runtime import text as device_text


def _emoji_missing():
    from edgecl.data import DataError, emoji

    try:
        emoji.benchmark_pool()
    except DataError as exc:
        return str(exc)
    return None


# the pre-training pairs include emoji (pip extra ``emoji``, Debian packages in .ci/setup-system.sh): as test_emoji
needs_emoji = pytest.mark.skipif(_emoji_missing() is not None and not os.environ.get("CI"), reason="emoji vendors missing")


@pytest.fixture(scope="module")
def tiny():
    return load_clip("edgecl-clip-tiny")


def test_tokenizer_ids_are_the_documented_bytes():
    tok = device_text.tokenize(["grinning  face", "A\u00e9"])
    assert tok.dtype == np.int64 and tok.shape == (2, 64)
    assert tok[0, :15].tolist() == [257] + [b + 1 for b in b"GRINNING FACE"] + [258]
    assert tok[1, :5].tolist() == [257, ord("A") + 1, 0xC3 + 1, 0xA9 + 1, 258] and not tok[1, 5:].any()
    assert (tok.argmax(1) == [14, 4]).all()  # EOT is the largest id: open_clip pools there
    long = device_text.tokenize("X" * 100)[0]
    assert long[0] == 257 and long[-1] == 258 and (long[1:-1] == ord("X") + 1).all()
    assert np.array_equal(device_text.tokenize("GRINNING FACE"), device_text.tokenize(" grinning\tface "))
    with pytest.raises(device_text.InvalidInputError, match="empty"):
        device_text.tokenize(["  "])


def test_torch_side_tokenizer_is_the_runtime_one(tiny):
    names = ["LATIN SMALL LETTER A", "grinning face", "\u00e9t\u00e9"]
    assert np.array_equal(tiny.tokenize(names).numpy(), device_text.tokenize(names))
    assert tiny.cfg.tokenizer == dict(device_text.BYTES_V1, context_length=64)


def test_class_text_reads_code_point_classes_as_unicode_names():
    assert class_text("U+00E9") == "LATIN SMALL LETTER E WITH ACUTE"
    assert class_text("grinning face") == "grinning face"


def test_strict_loading_refuses_missing_and_mismatching_files(tmp_path):
    model = from_config(TINY, seed=3)
    state = {k: v.contiguous() for k, v in model.model.state_dict().items()}
    save_file(state, tmp_path / "full.safetensors")
    again = load(TINY, tmp_path / "full.safetensors")
    x = torch.randn(2, 3, 32, 32)
    tokens = again.tokenize(["A", "B"])
    torch.testing.assert_close(again.encode_image(x), model.encode_image(x))
    torch.testing.assert_close(again.encode_text(tokens), model.encode_text(tokens))
    with pytest.raises(ClipError, match="not found"):
        load(TINY, tmp_path / "absent.safetensors")
    missing = dict(state)
    missing.pop("text_projection")
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(ClipError, match="1 of .* tensors missing.*text_projection"):
        load(TINY, tmp_path / "missing.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.safetensors")
    with pytest.raises(ClipError, match="1 unexpected.*extra.weight"):
        load(TINY, tmp_path / "extra.safetensors")
    save_file({**state, "token_embedding.weight": torch.zeros(10, 128)}, tmp_path / "shape.safetensors")
    with pytest.raises(ClipError, match="another shape.*token_embedding"):
        load(TINY, tmp_path / "shape.safetensors")
    with pytest.raises(ClipError, match="unknown open_clip config"):
        from_config("no-such-clip")
    with pytest.raises(ClipError, match="edgecl.zoo.load_clip"):
        load("edgecl-clip-tiny")


def test_named_model_image_tower_is_the_embedded_vit(tiny):
    vit = create_backbone("edgecl-vit-tiny")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_image(x), vit(x))
    bb = create_backbone("edgecl-clip-tiny")
    assert bb.spec.name == "edgecl-clip-tiny" and bb.spec.notes == {"clip": "edgecl-clip-tiny"} and bb.clip.name == bb.spec.name
    assert set(bb.state_dict()) == {f"model.{k}" for k in vit.model.state_dict()}  # the text tower is no submodule
    assert "edgecl-clip-tiny" in CLIP_MODELS and tiny.prototype_map is not None


def test_trimmed_text_encoding_equals_open_clips(tiny):
    tokens = tiny.tokenize(["LATIN SMALL LETTER A WITH GRAVE", "PIE", "BLACK-FEATHERED NORTH EAST ARROW"])
    with torch.no_grad():
        torch.testing.assert_close(_encode_text(tiny.model, tokens), tiny.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_info_nce_and_prototype_map_formulas():
    img, txt = torch.eye(4) * 3, torch.eye(4)
    loss, acc = info_nce(img, txt, torch.tensor(np.log(10.0)))
    expected = -np.log(np.exp(10) / (np.exp(10) + 3))
    assert acc == 1.0 and abs(float(loss) - expected) < 1e-5
    rng = np.random.default_rng(0)
    t = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((50, 8))).float(), dim=-1)
    w, b = torch.from_numpy(rng.standard_normal((6, 8))).float(), torch.arange(6).float()
    wf, bf = fit_prototype_map(t, t @ w.T + b, ridge=0.0)
    torch.testing.assert_close(wf, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bf, b, atol=1e-4, rtol=1e-4)


@needs_emoji
def test_pretraining_classes_are_disjoint_from_the_benchmarks():
    from edgecl.data import emoji, glyphs

    cps = set(emoji_codepoints())
    assert not cps & {cp for cp, _ in glyphs.benchmark_pool()}
    for spec in ("emoji:100", "emoji:200", "emoji:500"):
        assert not cps & set(emoji.plan(emoji.parse_spec(spec))[0])
    assert all(unicodedata.name(chr(cp), "") for cp in cps)


def _tiny_recipe():
    kw = dict(RECIPE.task_kwargs, glyph_classes=10, emoji_classes=6, glyph_per_class=2, emoji_per_class=2)
    return RECIPE.with_(steps=4, batch_size=8, task_kwargs=kw, warmup_frac=0.25)


@needs_emoji
def test_pretraining_is_deterministic_and_learns_the_text_side():
    recipe = _tiny_recipe()
    trunk = from_config(TINY, seed=1).visual.trunk.state_dict()
    a = pretrain_clip(recipe, trunk, threads=1, workers=1)
    b = pretrain_clip(recipe, trunk, threads=1, workers=1)
    sa, sb = text_state(a.clip), text_state(b.clip)
    assert set(sa) == set(sb) and {"prototype_map.weight", "prototype_map.bias", "logit_scale"} <= set(sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    init = text_state(from_config(TINY, seed=None))  # another init: the run changed the text side
    assert not torch.equal(sa["text_projection"], init["text_projection"])
    assert a.metrics["glyph_classes"] == 10 and a.metrics["emoji_classes"] == 6
    assert torch.equal(a.clip.visual.trunk.state_dict()["pos_embed"], trunk["pos_embed"])  # the image tower is locked


def test_zero_shot_above_chance_on_held_out_glyph_classes(tiny):
    from edgecl.data import load_dataset

    _, test = load_dataset("glyphs:50")
    r = zero_shot(tiny, test.images, test.labels, test.class_names)
    assert r["chance"] == 0.02
    # 500 test images: 2 x chance is > 3 standard deviations of chance accuracy (measured: 5.8 %, 5.8 %)
    assert r["clip"] > 2 * r["chance"] and r["prototype"] > 2 * r["chance"]


def test_text_tower_onnx_parity(tiny, tmp_path):
    from edgecl_export.text_graph import export_text, text_parity

    export_text(tiny, tmp_path / "text.onnx")
    assert text_parity(tiny, tmp_path / "text.onnx") <= 1e-4
    names = [f"LATIN CAPITAL LETTER {c}" for c in "ABCDEFGHIJ"]
    assert text_parity(tiny, tmp_path / "text.onnx", names) <= 1e-4  # a batch size other than the traced one


def test_text_tower_refusals(tiny):
    from edgecl_export.text_graph import text_tower_refusal

    assert text_tower_refusal(tiny, "prototype_cosine", False, 192) is None
    assert "takes no text prototype" in text_tower_refusal(tiny, "ridge", True, 2048)
    assert "not the CLIP image embeddings" in text_tower_refusal(tiny, "prototype_cosine", False, 384)  # APER's concat
    assert "not the CLIP image embeddings" in text_tower_refusal(tiny, "prototype_cosine", True, 192)
