import numpy as np
import pytest

from edgecl_runtime import InvalidInputError
from edgecl_runtime.preprocess import preprocess, resize

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
        ("cat.png", "image file not found"),  # paths are read (load_images); a missing one is refused
        (3.5, "numpy array"),
    ],
)
def test_bad_inputs_are_rejected_clearly(bad, msg):
    with pytest.raises(InvalidInputError, match=msg):
        preprocess(bad, SIZE, MEAN, STD)


# ----------------------------------------------------------------------------------------------
# The vectorised implementation against the reference one it replaced (dense resize matrices,
# float conversion first, normalise then transpose), kept here verbatim as the oracle.


def _ref_weights(n_in, n_out):
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    sums = w.sum(axis=1, keepdims=True)
    w /= np.where(sums == 0, 1.0, sums)
    return w.astype(np.float32)


def _ref_preprocess(images, input_size, mean, std):
    _, h, w = input_size

    def to_float(im):
        im = im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im.astype(np.float32)
        im = im[..., None] if im.ndim == 2 else im
        return np.repeat(im, 3, -1) if im.shape[-1] == 1 else im[..., :3]

    def ref_resize(im):
        if im.shape[-3:-1] == (h, w):
            return im
        out = np.einsum("oh,...hwc->...owc", _ref_weights(im.shape[-3], h), im, optimize=True)
        return np.einsum("pw,...owc->...opc", _ref_weights(im.shape[-2], w), out, optimize=True)

    if isinstance(images, list):
        batch = np.stack([ref_resize(to_float(np.asarray(im))) for im in images])
    else:
        batch = ref_resize(to_float(images if images.ndim == 4 else images[None]))
    batch = (batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_without_resize_the_result_is_bitwise_the_reference(dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    x = x if dtype == np.uint8 else (x / 255).astype(dtype)
    out = preprocess(x, (3, 24, 24), *IMNET)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, _ref_preprocess(x, (3, 24, 24), *IMNET))


@pytest.mark.parametrize(
    "shape, size",
    [
        ((3, 480, 640, 3), (224, 224)),  # camera frames, shrink (taps path), one chunk per image
        ((40, 32, 32, 3), (224, 224)),  # upsampling, dense path for short rows, several chunks
        ((7, 50, 30, 3), (32, 32)),  # mixed shrink / enlarge
        ((2, 300, 90, 4), (64, 48)),  # RGBA, non-square output
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_matches_the_dense_reference_to_float_rounding(shape, size, dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    x = x if dtype == np.uint8 else (x / 255).astype(dtype)
    out = preprocess(x, (3, *size), *IMNET)
    ref = _ref_preprocess(x, (3, *size), *IMNET)
    assert out.shape == ref.shape == (shape[0], 3, *size)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)  # values span ~[-2.2, 2.7]


def test_public_resize_matches_dense_filter_and_keeps_layout():
    x = np.random.default_rng(6).random((2, 45, 80, 3), dtype=np.float32)
    dense = np.einsum("oh,...hwc->...owc", _ref_weights(45, 20), x)
    dense = np.einsum("pw,...owc->...opc", _ref_weights(80, 30), dense)
    out = resize(x, (20, 30))
    assert out.shape == (2, 20, 30, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, dense, atol=2e-6)
    assert resize(x, (45, 80)) is x


def test_list_of_mixed_sizes_matches_reference():
    rng = np.random.default_rng(5)
    ims = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(40, 60, 3), (32, 32, 3), (10, 12), (70, 20, 4)]]
    np.testing.assert_allclose(preprocess(ims, (3, 32, 32), *IMNET), _ref_preprocess(ims, (3, 32, 32), *IMNET), atol=2e-5)
