"""predict / embed / add_class take PIL images and image file paths as well as arrays."""

from pathlib import Path

import numpy as np
import pytest

from edgecl_runtime import Bundle
from edgecl_runtime.errors import InvalidInputError
from edgecl_runtime.preprocess import load_images

Image = pytest.importorskip("PIL.Image")

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-v2"


def _rgb(seed: int, size=(20, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def tiny(tmp_path):
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(FIXTURE, dst)
    return Bundle.load(dst)


def test_load_images_converts_pil_and_paths(tmp_path):
    arr = _rgb(0)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(load_images(Image.fromarray(arr)), arr)
    assert np.array_equal(load_images(tmp_path / "a.png"), arr)
    assert np.array_equal(load_images(str(tmp_path / "a.png")), arr)
    both = load_images([Image.fromarray(arr).convert("L"), tmp_path / "a.png", arr])
    assert [b.shape for b in both] == [(20, 24, 3)] * 3
    assert both[2] is arr
    batch = np.stack([arr, arr])
    assert load_images(batch) is batch  # arrays pass through untouched


def test_predict_takes_a_single_pil_image_and_paths(tiny, tmp_path):
    arrs = [_rgb(i) for i in range(3)]
    paths = []
    for i, a in enumerate(arrs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    ref = tiny.scores(arrs)
    assert np.allclose(tiny.scores(Image.fromarray(arrs[0])), ref[:1])
    assert np.allclose(tiny.scores(paths), ref)
    assert np.allclose(tiny.scores(str(paths[1])), ref[1:2])
    p = tiny.predict([Image.fromarray(arrs[2]), paths[0]], top_k=2)
    assert p.labels == [tiny.predict(arrs[2]).labels[0], tiny.predict(arrs[0]).labels[0]]


def test_add_class_from_pil_and_paths(tiny, tmp_path):
    Image.fromarray(_rgb(5)).save(tmp_path / "x.png")
    r = tiny.add_class("delta", [Image.fromarray(_rgb(4)), tmp_path / "x.png"])
    assert r.created and r.examples_added == 2
    expected = tiny.embed([_rgb(4), _rgb(5)]).mean(axis=0)
    assert np.allclose(tiny.head.prototypes[-1], expected, atol=1e-5)


def test_bad_paths_are_refused_cleanly(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InvalidInputError, match="not found"):
        tiny.predict(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        tiny.predict(tmp_path / "notes.txt")
    with pytest.raises(InvalidInputError, match="cannot read image"):
        tiny.add_class("delta", [tmp_path / "broken.png"])
    assert tiny.classes == ["alpha", "beta", "gamma"]
