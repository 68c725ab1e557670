"""Photos read as people see them (issue 34): one decoder (``edgecl_runtime.io.decode_image``) for the CLI,
training folders, streamed folders and shards, and serve uploads; EXIF orientation applied, transparency
composited on white, 16-bit / CMYK / palette / greyscale files, HEIC through pillow-heif, the files an image
folder does not read reported; and the serve page's in-browser decoding giving Python's pixels."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, features

from edgecl_runtime.errors import InvalidInputError, MissingDependencyError
from edgecl_runtime.io import decode_image, read_image
from tests.conftest import ROOT

# EXIF orientation -> the stored array as a viewer shows it
SHOWN = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
HEIF_HINT = 'pip install "edgecl-runtime[heif]"'


def photo(h: int = 40, w: int = 80) -> np.ndarray:
    """A smooth uint8 RGB test picture with a red top-left corner (where it is shows the orientation)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 127 // (h + w)], -1).astype(np.uint8)
    a[: h // 4, : w // 4] = (250, 20, 20)
    return a


def encoded(arr_or_image, fmt: str, orientation: int | None = None, **kw) -> bytes:
    """An image (array or PIL) encoded as ``fmt``, with an EXIF Orientation tag if given."""
    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgba_picture(h: int = 30, w: int = 50) -> np.ndarray:
    """RGBA: a transparent background (its RGB not white), an opaque block, a row band of alpha 0..245."""
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = photo(h, w)
    a[5:20, 10:40, 3] = 255
    a[22:28, :, 3] = np.arange(w) * 5
    return a


def on_white(rgba: np.ndarray) -> np.ndarray:
    """The reference composite, in floats: round((c * a + 255 * (255 - a)) / 255)."""
    c, a = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64)
    return np.round((c * a + 255.0 * (255.0 - a)) / 255.0).astype(np.uint8)


def png16(rgba16: np.ndarray) -> bytes:
    """A 16-bit RGBA PNG (Pillow writes none) from a uint16 (H, W, 4) array."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgba16.shape
    rows = b"".join(b"\0" + rgba16[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_phone_jpeg_reads_as_viewers_show_it(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(encoded(photo(40, 80), "JPEG", orientation=6, quality=95))
    assert Image.open(path).size == (80, 40)  # stored 80 wide, 40 high
    got = read_image(path)
    assert got.shape == (80, 40, 3)  # shown 40 wide, 80 high, as every viewer does
    assert np.abs(got.astype(int) - SHOWN[6](photo(40, 80))).mean() < 2  # JPEG's loss only
    assert np.abs(got[2, -2].astype(int) - (250, 20, 20)).max() < 12  # the red corner went top right


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation(orientation):
    a = photo(30, 50)
    assert np.array_equal(decode_image(encoded(a, "PNG", orientation)), SHOWN[orientation](a))


def test_a_broken_exif_block_leaves_the_image_as_stored():
    data = encoded(photo(), "JPEG", quality=95, exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff")
    assert decode_image(data).shape == (40, 80, 3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB-tRNS", "L-tRNS"])
def test_transparency_is_composited_on_white(mode):
    rgba = rgba_picture()
    if mode in ("RGBA", "LA"):
        im = Image.fromarray(rgba).convert(mode)
    elif mode == "P":  # palette + tRNS: the palette entry of the background colour is transparent
        im = Image.fromarray(rgba[..., :3]).quantize(64)
        im.info["transparency"] = im.getpixel((0, 0))
    else:
        im = Image.fromarray(rgba[..., :3]).convert(mode[0] if mode != "RGB-tRNS" else "RGB")
        im.info["transparency"] = im.getpixel((0, 0))
    data = encoded(im, "PNG", transparency=im.info["transparency"]) if "transparency" in im.info else encoded(im, "PNG")
    reference = on_white(np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")))
    got = decode_image(data)
    assert np.array_equal(got, reference)
    assert tuple(got[0, 0]) == (255, 255, 255)  # the transparent background is white, not its stored RGB


def test_rgba_composite_values():
    rgba = rgba_picture()
    got = decode_image(encoded(rgba, "PNG"))
    assert np.array_equal(got, on_white(rgba))
    assert np.array_equal(got[5:20, 10:40], rgba[5:20, 10:40, :3])  # opaque pixels unchanged


def test_sixteen_bit_files_keep_their_high_byte():
    grey = (np.arange(1200).reshape(30, 40) * 53).astype(np.uint16)
    got = decode_image(encoded(Image.fromarray(grey), "PNG"))
    assert Image.open(io.BytesIO(encoded(Image.fromarray(grey), "PNG"))).mode == "I;16"
    assert np.array_equal(got, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    rgba16 = (rgba_picture().astype(np.uint16) * 257 + np.uint16(100)).clip(0, 65535).astype(np.uint16)
    rgba16[..., 3] = rgba_picture()[..., 3].astype(np.uint16) * 257
    got = decode_image(png16(rgba16))
    assert np.array_equal(got, on_white((rgba16 >> 8).astype(np.uint8)))


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("CMYK", "TIFF"), ("P", "PNG"), ("L", "PNG"), ("1", "PNG")])
def test_other_modes_read_as_pillow_converts_them(mode, fmt):
    im = Image.fromarray(photo()).convert(mode)
    data = encoded(im, fmt, quality=95) if fmt == "JPEG" else encoded(im, fmt)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == mode
    got = decode_image(data)
    assert got.shape == (40, 80, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(opened.convert("RGB")))


def test_32_bit_integer_images_are_read_as_16_bit_samples():
    values = (np.arange(1200).reshape(30, 40) * 60 - 1000).astype(np.int32)  # below 0 and above 65535 too
    data = encoded(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert np.array_equal(decode_image(data)[..., 1], (values.clip(0, 65535) >> 8).astype(np.uint8))


def test_a_pil_image_is_read_with_its_orientation():
    from edgecl_runtime.preprocess import load_images

    im = Image.open(io.BytesIO(encoded(photo(), "PNG", orientation=8)))
    assert np.array_equal(load_images(im), SHOWN[8](photo()))


def test_serve_uploads_decode_as_the_cli_does():
    from edgecl_runtime.serve.uploads import decode_image as upload

    pytest.importorskip("flask")
    for data in (encoded(photo(), "JPEG", orientation=6, quality=90), encoded(rgba_picture(), "PNG")):
        assert np.array_equal(upload(data), decode_image(data))


@pytest.fixture(scope="module")
def heif():
    return pytest.importorskip("pillow_heif", reason='pillow-heif not installed (pip install "edgecl-runtime[heif]")')


def test_heic_with_exif_orientation(heif, tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(encoded(photo(40, 80), "HEIF", orientation=6, quality=95))
    assert path.read_bytes()[4:12] == b"ftypheic"
    got = read_image(path)
    assert got.shape == (80, 40, 3)  # libheif applies the rotation pillow-heif stored from the EXIF tag
    assert np.abs(got.astype(int) - SHOWN[6](photo(40, 80))).mean() < 4


def test_avif_is_read_by_pillow(tmp_path):
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    path = tmp_path / "x.avif"
    path.write_bytes(encoded(photo(), "AVIF", quality=95))
    assert np.abs(read_image(path).astype(int) - photo()).mean() < 4


HEIF_MISSING = """
import sys
sys.modules["pillow_heif"] = None  # as if not installed
from edgecl_runtime.io import read_image
from edgecl_runtime.errors import MissingDependencyError
from edgecl_runtime.serve.uploads import decode_image
from edgecl_runtime.serve.errors import HTTPError
try:
    read_image(sys.argv[1])
except MissingDependencyError as exc:
    print("read:", exc)
try:
    decode_image(open(sys.argv[1], "rb").read(), "upload IMG.HEIC")
except HTTPError as exc:
    print("upload:", exc.status, exc.message)
"""


def test_heic_without_pillow_heif_names_the_install(heif, tmp_path):
    path = tmp_path / "IMG_0002.heic"
    path.write_bytes(encoded(photo(), "HEIF", quality=80))
    out = subprocess.run([sys.executable, "-c", HEIF_MISSING, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    read, upload = out.stdout.strip().splitlines()
    assert read.startswith("read:") and HEIF_HINT in read and "IMG_0002.heic" in read
    assert upload.startswith("upload: 415") and HEIF_HINT in upload


def test_not_an_image_is_an_invalid_input():
    with pytest.raises(InvalidInputError, match="not an image file"):
        decode_image(b"hello, world", "notes")
    assert not issubclass(MissingDependencyError, InvalidInputError)  # a missing plugin is told apart


# ------------------------------------------------------------------ image folders: what is not read is said


def _class_folder(root, name, n=3, extras=()):
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(encoded(photo(8 + i, 12), "PNG"))
    for extra in extras:
        if extra.endswith("/"):
            (folder / extra).mkdir()
        else:
            (folder / extra).write_bytes(b"not an image")
    return folder


def test_image_folder_reports_the_files_it_does_not_read(tmp_path, caplog):
    from edgecl.data import load_dataset

    _class_folder(tmp_path, "cat", extras=["notes.txt", ".DS_Store", "._0.png", "more/"])
    _class_folder(tmp_path, "dog", extras=["broken.jpg"])
    _class_folder(tmp_path, "eel")
    with caplog.at_level(logging.WARNING, logger="edgecl.data"):
        train, test = split = load_dataset(str(tmp_path), image_size=(8, 8))
    assert split.unread == {"cat": ["more/", "notes.txt"], "dog": ["broken.jpg"]}  # hidden files are not listed
    assert len(train) + len(test) == 9
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("2 files not read in class cat (first names more/, notes.txt)") for line in lines)
    assert any(line.startswith("1 file not read in class dog (first names broken.jpg); broken.jpg: cannot read")
               for line in lines)


def test_fixed_split_folders_and_streamed_folders_report_too(tmp_path):
    from edgecl.data import load_dataset

    for split in ("train", "test"):
        _class_folder(tmp_path / split, "a", extras=["x.heic.txt"] if split == "test" else [])
        _class_folder(tmp_path / split, "b")
    assert load_dataset(str(tmp_path), image_size=(8, 8)).unread == {"test/a": ["x.heic.txt"]}
    assert load_dataset(f"stream:{tmp_path}", image_size=(8, 8)).unread == {"test/a": ["x.heic.txt"]}


def test_a_class_of_unreadable_files_is_an_error_naming_them(tmp_path):
    from edgecl.data import DataError, load_dataset

    _class_folder(tmp_path, "a")
    _class_folder(tmp_path, "b", n=0, extras=["x.jpg", "y.txt"])
    with pytest.raises(DataError, match=r"class folder .*b holds no readable images.*not read: x.jpg, y.txt"):
        load_dataset(str(tmp_path), image_size=(8, 8))


def test_heic_files_of_a_folder_are_read(heif, tmp_path):
    from edgecl.data import load_dataset

    for name in ("a", "b"):
        folder = _class_folder(tmp_path, name, n=2)
        (folder / "IMG_1.HEIC").write_bytes(encoded(photo(12, 8), "HEIF", orientation=6, quality=90))
    split = load_dataset(str(tmp_path), image_size=(8, 8))
    assert split.unread == {} and len(split[0]) + len(split[1]) == 6


def test_streamed_folders_and_shards_decode_as_the_in_memory_folder(tmp_path):
    pytest.importorskip("webdataset")
    from edgecl.data import load_dataset
    from edgecl.data.stream import write_split_shards

    for name, data in (("jpeg", encoded(photo(40, 80), "JPEG", orientation=6, quality=90)),
                       ("png", encoded(rgba_picture(), "PNG"))):
        folder = _class_folder(tmp_path / "photos", name, n=1)
        (folder / f"photo.{'jpg' if name == 'jpeg' else 'png'}").write_bytes(data)
    memory = load_dataset(str(tmp_path / "photos"), image_size=(24, 12), test_fraction=0.5)
    streamed = load_dataset(f"stream:{tmp_path / 'photos'}", image_size=(24, 12), test_fraction=0.5)
    write_split_shards(*streamed, tmp_path / "shards", per_shard=2)  # the folder's files as they are
    sharded = load_dataset(f"wds:{tmp_path / 'shards'}", image_size=(24, 12))
    for m, s, w in zip(memory, streamed, sharded):
        rows = np.arange(len(m))
        assert np.array_equal(m.images, s.images[rows]) and np.array_equal(m.images, w.images[rows])


def test_train_json_lists_the_unread_files(tmp_path):
    from click.testing import CliRunner

    from edgecl.cli import main

    for name in ("a", "b", "c"):
        _class_folder(tmp_path / "data", name, n=4, extras=["IMG_9.mov"] if name == "b" else [])
    out = CliRunner().invoke(main, ["train", "--dataset", str(tmp_path / "data"), "--backbone", "resnet10t",
                                    "--weights", "random", "--img-size", "32", "--init-cls", "2", "--increment", "1",
                                    "--json", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["unread_files"] == {"b": ["IMG_9.mov"]}
    assert "1 file not read in class b (first names IMG_9.mov)" in out.stderr


# ------------------------------------------------------------------ the serve page's in-browser decoding

PIXELS_JS = """const done = arguments[arguments.length - 1];
(async () => {
  const { pixels } = await import("/static/browser.js");
  const bin = atob(arguments[0]);
  const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  const px = await pixels(new Blob([bytes], { type: arguments[1] }));
  let s = "";
  for (const v of px.data) s += String.fromCharCode(v);
  done([px.width, px.height, btoa(s)]);
})().catch((err) => done(String(err)));"""


def browser_pixels(driver, data: bytes, mime: str) -> np.ndarray:
    """RGBA pixels the serve page's in-browser mode draws for an image file (browser.js ``pixels``)."""
    out = driver.execute_async_script(PIXELS_JS, base64.b64encode(data).decode(), mime)
    assert not isinstance(out, str), out
    w, h, b64 = out
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)


# Measured with Debian's chromium 14x and Pillow 13 wheels: 0 levels for every JPEG here (4:4:4 and 4:2:0,
# quality 75 and 95, orientations 1, 3, 6) - both decode with libjpeg-turbo (islow IDCT, fancy upsampling).
# One level of margin for other builds of either.
JPEG_TOLERANCE = 1


@pytest.mark.browser
def test_the_browser_draws_python_pixels(tmp_path):
    pytest.importorskip("flask")
    from serve_browser import chromium_driver, running_server
    from tests.fixtures import copy_fixture

    cases = [(encoded(rgba_picture(), "PNG"), "image/png", 0)]
    cases += [(encoded(photo(40, 80), "JPEG", orientation=o, quality=q, subsampling=s), "image/jpeg", JPEG_TOLERANCE)
              for o in (1, 3, 6, 8) for q, s in ((75, 2), (95, 0))]
    with running_server(copy_fixture(tmp_path / "bundle")) as server, chromium_driver() as driver:
        driver.get(server.url)
        driver.set_script_timeout(60)
        for data, mime, tolerance in cases:
            got, ref = browser_pixels(driver, data, mime), decode_image(data)
            assert got.shape[:2] == ref.shape[:2] and (got[..., 3] == 255).all()
            assert np.abs(got[..., :3].astype(int) - ref).max() <= tolerance
