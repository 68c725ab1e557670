"""examples/folder_watch.py and unknown images (issue 30): an image of a class the bundle was never taught is moved
to to-label/; once the user names it (moves it into to-label/NAME/) it is learnt, and the next image of that class
is recognised."""

from __future__ import annotations

import json

from edgecl_runtime import Bundle
from tests.conftest import class_images
from tests.test_example_app import run_app, save

NEW = "lime-circle"  # never taught to the exported bundle; one example is enough to learn it


def log(incoming) -> dict:
    return {d["file"]: d for d in map(json.loads, (incoming / "predictions.jsonl").read_text().splitlines())}


def test_an_unknown_image_is_set_aside_then_named_learnt_and_recognised(bundle_dir, shapes_new, tmp_path):
    train, _ = shapes_new
    new, known = class_images(train, NEW, 2), class_images(train, "red-circle", 1)
    incoming = tmp_path / "incoming"
    save(new[0], incoming / "u0.png")
    save(known[0], incoming / "k.png")
    out = run_app(bundle_dir, incoming)
    assert "u0.png: unknown" in out and "moved to to-label/u0.png" in out
    assert (incoming / "to-label" / "u0.png").is_file() and not (incoming / "u0.png").exists()
    rows = log(incoming)
    assert rows["u0.png"]["label"] is None and rows["u0.png"]["moved_to"] == "to-label/u0.png"
    assert rows["k.png"]["label"] == "red-circle" and (incoming / "k.png").is_file()
    assert rows["u0.png"]["unknown_score"] > rows["k.png"]["unknown_score"]
    assert run_app(bundle_dir, incoming) == ""  # waiting for a name: nothing to do

    # the user names it; a new image of the class arrives
    (incoming / "to-label" / NEW).mkdir()
    (incoming / "to-label" / "u0.png").replace(incoming / "to-label" / NEW / "u0.png")
    save(new[1], incoming / "u1.png")
    out = run_app(bundle_dir, incoming)
    assert f"learned {NEW!r} from 1 image(s)" in out
    assert log(incoming)["u1.png"]["label"] == NEW and (incoming / "u1.png").is_file()
    assert (incoming / NEW / "u0.png").is_file() and not (incoming / "to-label" / NEW).exists()
    b = Bundle.load(bundle_dir)
    assert b.classes[-1] == NEW and int(b.head.counts[-1]) == 1 and "to-label" not in b.classes
    assert run_app(bundle_dir, incoming) == ""  # a restart learns nothing twice


def test_unknown_off_moves_nothing(bundle_dir, shapes_new, tmp_path):
    incoming = tmp_path / "incoming"
    save(class_images(shapes_new[0], NEW, 1)[0], incoming / "u0.png")
    run_app(bundle_dir, incoming, "--unknown", "off")
    assert (incoming / "u0.png").is_file() and not (incoming / "to-label").exists()
    assert log(incoming)["u0.png"]["label"] is not None
