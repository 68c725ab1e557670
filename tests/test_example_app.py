"""examples/folder_watch.py: predicts new images, learns classes from sub-folders, and resumes after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import class_images
from edgecl_runtime import Bundle

Image = pytest.importorskip("PIL.Image")
APP = Path(__file__).resolve().parents[1] / "examples" / "folder_watch.py"


def run_app(bundle_dir, incoming, *args) -> str:
    r = subprocess.run([sys.executable, str(APP), str(bundle_dir), str(incoming), "--once", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def save(arr, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def predictions(incoming) -> dict:
    lines = (incoming / "predictions.jsonl").read_text().splitlines()
    return {d["file"]: d["top_k"][0][0] for d in map(json.loads, lines)} | {"_lines": len(lines)}


def test_folder_watch_learns_predicts_and_resumes(bundle_dir, shapes_new, tmp_path):
    train, _ = shapes_new
    ring, star = class_images(train, "green-ring", 3), class_images(train, "blue-star", 3)
    incoming = tmp_path / "incoming"
    for i in range(2):
        save(ring[i], incoming / "green-ring" / f"{i}.png")
    save(ring[2], incoming / "a.png")
    (incoming / "notes.txt").write_text("not an image: ignored")
    out = run_app(bundle_dir, incoming)
    assert "learned 'green-ring' from 2 image(s)" in out
    assert predictions(incoming) == {"a.png": "green-ring", "_lines": 1}

    # restart: only what is new is handled; the bundle kept what it learned
    for i in range(2):
        save(star[i], incoming / "blue-star" / f"{i}.png")
    save(star[2], incoming / "b.png")
    (incoming / "green-ring" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = run_app(bundle_dir, incoming)
    assert "learned 'blue-star' from 2 image(s)" in out and "cannot learn 'green-ring'" in out
    assert predictions(incoming) == {"a.png": "green-ring", "b.png": "blue-star", "_lines": 2}
    b = Bundle.load(bundle_dir)
    assert b.classes[-2:] == ["green-ring", "blue-star"]
    assert [int(n) for n in b.head.counts[-2:]] == [2, 2]  # nothing learned twice, the broken file not at all
    assert run_app(bundle_dir, incoming) == ""  # a third run finds nothing new
    assert np.array_equal(Bundle.load(bundle_dir).head.counts, b.head.counts)
