"""A crash at any point of add_class leaves a valid bundle (old or new state, never broken).

The journal record is the write-ahead point: a crash before it is fsync'd
leaves the old state; after it, the class is there (the head state that lags
the journal is replayed on load and committed by the next update).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecl_runtime import Bundle
from tests.conftest import ROOT, class_images

CRASH_SCRIPT = """
import os, sys, numpy as np
import edgecl_runtime.storage as storage
from edgecl_runtime import Bundle
point = sys.argv[2]
def crash(name):
    if name == point:
        os._exit(86)  # no cleanup, no finally blocks: like a power cut after this step
storage.crash_point = crash
b = Bundle.load(sys.argv[1])
b.add_class("white-star", np.load(sys.argv[3]))
print("finished without crashing")
"""


@pytest.mark.parametrize(
    "point, committed",
    [
        ("mid-write:journal-000000.log", False),
        ("after-journal", True),
        ("mid-write:head-000001.safetensors", True),
        ("after-head", True),
        ("mid-write:manifest.json", True),
        ("after-manifest", True),
    ],
)
def test_crash_during_add_class_leaves_valid_bundle(bundle_dir, shapes_new, tmp_path, point, committed):
    train, test = shapes_new
    np.save(tmp_path / "ex.npy", class_images(train, "white-star", 5))
    before = Bundle.load(bundle_dir).classes
    out = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(bundle_dir), point, str(tmp_path / "ex.npy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 86, out.stdout + out.stderr
    b = Bundle.load(bundle_dir)  # verifies every checksum
    assert b.classes == (before + ["white-star"] if committed else before)
    # the next update recovers and cleans up leftovers
    b.add_class("white-ellipse", class_images(train, "white-ellipse", 5))
    names = sorted(p.name for p in bundle_dir.iterdir())
    assert [n for n in names if n.endswith(".tmp")] == []
    current = json.loads((bundle_dir / "manifest.json").read_text())["head"]["file"]
    assert [n for n in names if n.startswith("head-")] == ["head-000000.safetensors", current]  # base + current only
    reloaded = Bundle.load(bundle_dir)
    assert reloaded.classes[-1] == "white-ellipse"
    assert np.mean(np.array(reloaded.predict(class_images(test, "white-ellipse")).labels) == "white-ellipse") >= 0.8


def test_stale_in_memory_bundle_does_not_lose_updates(bundle_dir, shapes_new):
    train, _ = shapes_new
    a, b = Bundle.load(bundle_dir), Bundle.load(bundle_dir)
    a.add_class("white-star", class_images(train, "white-star", 3))
    b.add_class("white-ring", class_images(train, "white-ring", 3))  # b loaded before a's update
    assert Bundle.load(bundle_dir).classes[-2:] == ["white-star", "white-ring"]
