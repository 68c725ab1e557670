"""Image files in Node (runtime/js/lib/images.mjs: pngjs, jpeg-js) against Python's reading of the same files
(``edgecl_runtime.io.decode_image``): pixels (PNG exact; JPEG within jpeg-js's measured difference), EXIF
orientation, transparency on white, and ``node cli.mjs predict BUNDLE photo.png photo.jpg`` giving Python's top-1."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from edgecl_runtime import Bundle
from edgecl_runtime.io import decode_image
from tests.conftest import ROOT
from tests.fixtures import copy_fixture
from tests.test_photo_io import encoded, photo, png16, rgba_picture

NODE = shutil.which("node")
JS = ROOT / "runtime" / "js"
INSTALL = "cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund  (.ci/setup-system.sh runs it)"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the runtime/js client cannot run (CI installs node)")

DECODE = """
import { readFileSync } from "node:fs";
import { decodeImage } from "./lib/images.mjs";
const out = [];
for (const path of process.argv.slice(1)) {
  const im = await decodeImage(new Uint8Array(readFileSync(path)), path);
  out.push([im.height, im.width, Buffer.from(im.data).toString("base64")]);
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module", autouse=True)
def node_modules():
    for package in ("pngjs", "jpeg-js", "onnxruntime-node"):
        if not (JS / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"runtime/js/node_modules lacks {package}: run `{INSTALL}`")


def node_pixels(paths) -> list[np.ndarray]:
    """RGB pixels Node decodes from image files (lib/images.mjs decodeImage)."""
    proc = subprocess.run([NODE, "--input-type=module", "-e", DECODE, *map(str, paths)], cwd=JS,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [np.frombuffer(base64.b64decode(b), np.uint8).reshape(h, w, 3) for h, w, b in json.loads(proc.stdout)]


def write(tmp_path, files: dict[str, bytes]) -> list:
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def png_cases() -> dict[str, bytes]:
    rgba = rgba_picture()
    p = Image.fromarray(rgba[..., :3]).quantize(64)
    grey16 = Image.fromarray((np.arange(1200).reshape(30, 40) * 53).astype(np.uint16))
    rgba16 = rgba.astype(np.uint16) * 257 + np.uint16(77)
    cases = {f"o{o}.png": encoded(photo(30, 50), "PNG", orientation=o) for o in range(1, 9)}
    cases |= {
        "rgba.png": encoded(rgba, "PNG"), "la.png": encoded(Image.fromarray(rgba).convert("LA"), "PNG"),
        "p.png": encoded(p, "PNG"), "p-trns.png": encoded(p, "PNG", transparency=p.getpixel((0, 0))),
        "rgb-trns.png": encoded(rgba[..., :3], "PNG", transparency=tuple(int(v) for v in rgba[0, 0, :3])),
        "grey16.png": encoded(grey16, "PNG"), "rgba16.png": png16(rgba16),
        "bw.png": encoded(Image.fromarray(photo()).convert("1"), "PNG"),
        "rgba-o6.png": encoded(rgba, "PNG", orientation=6),
    }
    return cases


def test_png_pixels_equal_python(tmp_path):
    paths = write(tmp_path, png_cases())
    for path, got in zip(paths, node_pixels(paths)):
        assert np.array_equal(got, decode_image(path.read_bytes())), path.name


# jpeg-js has its own IDCT and upsamples chroma by repeating samples, where libjpeg-turbo (Pillow, browsers)
# interpolates ("fancy upsampling"). Measured on photo() at quality 75 and 95, orientations 1..8: 4:4:4 (no
# subsampling) differs by at most 3 levels (mean 0.5); 4:2:0 (phones' default) by a mean of 2.05 levels, but up to
# ~75 at sharp saturated colour edges (the red corner) where the two upsamplings differ most.
JPEG_444_MAX, JPEG_420_MEAN = 4, 3.0


@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_pixels_within_the_measured_tolerance(tmp_path, subsampling):
    files = {f"o{o}-q{q}.jpg": encoded(photo(40, 80), "JPEG", orientation=o, quality=q, subsampling=subsampling)
             for o in (1, 3, 6, 8) for q in (75, 95)}
    paths = write(tmp_path, files)
    for path, got in zip(paths, node_pixels(paths)):
        ref = decode_image(path.read_bytes())
        assert got.shape == ref.shape, path.name
        diff = np.abs(got.astype(int) - ref)
        assert (diff.max() <= JPEG_444_MAX) if subsampling == 0 else (diff.mean() <= JPEG_420_MEAN), (path.name, diff.max())


def run_cli(*args):
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), *map(str, args)], capture_output=True, text=True, timeout=300)
    return proc


def picture(i: int) -> np.ndarray:
    """Four distinct 20x30 pictures (class ``c{i}`` of the test below)."""
    a = photo(20, 30)
    return np.roll(a, 7 * i, axis=1) if i % 2 else np.ascontiguousarray(a[::-1] // (1 + i // 2))


def test_predict_on_png_and_jpeg_files_gives_pythons_top1(tmp_path):
    bundle_dir = copy_fixture(tmp_path / "bundle")
    b = Bundle.load(bundle_dir)
    for i in range(4):  # classes the tiny fixture tells apart, added on the device (Node replays the journal)
        b.add_class(f"c{i}", [picture(i)])
    files = {}
    for i in range(4):  # each picture with two transparent rows, stored turned left with orientation 6 (shown upright)
        rgba = np.dstack([picture(i), np.full((20, 30), 255, np.uint8)])
        rgba[:2, :, 3] = 0
        for o, stored in ((1, rgba), (6, np.ascontiguousarray(np.rot90(rgba, 1)))):
            files[f"c{i}-o{o}.png"] = encoded(stored, "PNG", orientation=o)
            files[f"c{i}-o{o}.jpg"] = encoded(np.ascontiguousarray(stored[..., :3]), "JPEG", orientation=o, quality=95,
                                              subsampling=0)
    paths = write(tmp_path, files)
    proc = run_cli("predict", bundle_dir, *paths)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["predictions"]
    ref = b.predict(paths)
    assert len(set(ref.labels)) >= 3 and ref.labels[0::4] == ref.labels[2::4]  # distinct; turned = upright
    for path, g, label, score in zip(paths, got, ref.labels, ref.scores):
        assert g["label"] == label, path.name
        assert abs(g["score"] - float(score)) < (1e-4 if path.suffix == ".png" else 1e-2), path.name


def test_unsupported_files_are_refused_by_name(tmp_path):
    bundle_dir = copy_fixture(tmp_path / "bundle")
    gif = write(tmp_path, {"anim.gif": encoded(photo(), "GIF")})[0]
    proc = run_cli("predict", bundle_dir, gif)
    assert proc.returncode == 1 and "InvalidInputError" in proc.stderr and "anim.gif" in proc.stderr
