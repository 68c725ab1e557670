import numpy as np
import pytest
from PIL import Image

from edgecl.data import DataError, load_dataset, make_shapes


def test_shapes_are_deterministic_and_balanced():
    a_tr, a_te = make_shapes(20, 4, 2, seed=5)
    b_tr, _ = make_shapes(20, 4, 2, seed=5)
    c_tr, _ = make_shapes(20, 4, 2, seed=6)
    assert np.array_equal(a_tr.images, b_tr.images)
    assert not np.array_equal(a_tr.images, c_tr.images)
    assert a_tr.images.shape == (80, 32, 32, 3) and a_te.images.shape == (40, 32, 32, 3)
    assert np.bincount(a_tr.labels).tolist() == [4] * 20
    assert a_tr.class_names[0] == "red-circle" and len(set(a_tr.class_names)) == 20


def _write_folder(root, classes=("cat", "dog", "owl"), n=4, size=(20, 24)):
    rng = np.random.default_rng(0)
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for j in range(n):
            im = np.full((*size, 3), 40 * i, np.uint8) + rng.integers(0, 10, (*size, 3), dtype=np.uint8)
            Image.fromarray(im).save(root / c / f"{j}.png")


def test_image_folder_split_and_resize(tmp_path):
    _write_folder(tmp_path / "ds")
    train, test = load_dataset(str(tmp_path / "ds"), image_size=(16, 16), seed=0, test_fraction=0.25)
    assert train.class_names == test.class_names == ["cat", "dog", "owl"]
    assert train.images.shape[1:] == (16, 16, 3)
    assert len(train) == 9 and len(test) == 3 and sorted(test.labels.tolist()) == [0, 1, 2]


def test_image_folder_fixed_train_test(tmp_path):
    _write_folder(tmp_path / "ds" / "train")
    _write_folder(tmp_path / "ds" / "test", n=2)
    train, test = load_dataset(str(tmp_path / "ds"), image_size=(16, 16))
    assert len(train) == 12 and len(test) == 6


def test_npz_source(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 10, 10), dtype=np.uint8)  # grayscale
    y = np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    train, test = load_dataset(str(tmp_path / "d.npz"), test_fraction=0.2)
    assert train.images.shape[1:] == (10, 10, 3) and len(train) == 24 and len(test) == 6
    assert train.class_names == ["a", "b", "c"]


@pytest.mark.parametrize(
    "setup, msg",
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "one sub-folder per class"),
        (lambda p: np.savez(p / "bad.npz", a=np.zeros(3)) or p / "bad.npz", "expected arrays"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "unsupported"),
    ],
)
def test_bad_sources(tmp_path, setup, msg):
    with pytest.raises(DataError, match=msg):
        load_dataset(str(setup(tmp_path)))


def test_class_with_single_image_cannot_be_split(tmp_path):
    _write_folder(tmp_path / "ds", n=1)
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(str(tmp_path / "ds"), image_size=(16, 16))
