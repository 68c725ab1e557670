import numpy as np
import pytest

from runtime import InvalidInputError
from runtime.preprocess import preprocess, resize

SIZE, MEAN, STD = (3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_uint8_and_float_inputs_agree_and_normalise():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    a = preprocess(u8, SIZE, MEAN, STD)
    b = preprocess(u8.astype(np.float32) / 255, SIZE, MEAN, STD)
    assert a.shape == (2, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[0, 1, 2, 3], (u8[0, 2, 3, 1] / 255 - 0.5) / 0.25, atol=1e-6)


def test_resize_keeps_constants_and_halves_by_averaging():
    const = np.full((1, 20, 30, 3), 0.3, np.float32)
    np.testing.assert_allclose(resize(const, (7, 11)), 0.3, atol=1e-6)
    checker = np.indices((16, 16)).sum(0) % 2
    im = np.repeat(checker[None, ..., None].astype(np.float32), 3, -1)
    small = resize(im, (4, 4))  # antialiased: a fine checkerboard averages to grey
    np.testing.assert_allclose(small[:, 1:-1, 1:-1], 0.5, atol=0.05)


def test_single_grayscale_rgba_and_mixed_sizes():
    gray = np.zeros((10, 12), np.uint8)
    assert preprocess(gray, SIZE, MEAN, STD).shape == (1, 3, 8, 8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert preprocess(rgba, SIZE, MEAN, STD).shape == (1, 3, 8, 8)
    mixed = [np.zeros((5, 7, 3), np.uint8), np.ones((20, 9, 3), np.float32)]
    out = preprocess(mixed, SIZE, MEAN, STD)
    assert out.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(out[1], (1 - 0.5) / 0.25)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((2, 8, 8, 3), np.int32), "dtype"),
        (np.full((8, 8, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-last"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), "2-4 dimensional"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        ([], "empty"),
        (np.zeros((5, 8, 8), np.uint8), "ambiguous"),
        ("cat.png", "numpy array"),
    ],
)
def test_bad_inputs_are_rejected_clearly(bad, msg):
    with pytest.raises(InvalidInputError, match=msg):
        preprocess(bad, SIZE, MEAN, STD)
