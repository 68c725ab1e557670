"""A hostile environment: full disks, permission errors, planted symbolic links, bombs, deep nesting,
hostile names, forged updates. Nothing acknowledged is lost, nothing is committed twice, nothing is
written outside the bundle, and every failure is one documented error (one line from the CLI)."""

import errno
import json
import os
import shutil
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl_runtime import (
    Bundle,
    CorruptBundleError,
    LimitExceededError,
    SignatureError,
    StorageError,
    UnsafeFileError,
    journal,
    limits,
    signing,
    storage,
    store,
)
from edgecl_runtime.cli import main
from edgecl_runtime.io import read_images
from edgecl_runtime.manifest import file_entry, manifest_checksum
from tests.faults import MODES, Injector, prepare, reference_of, run_matrix, run_trial
from tests.fixtures import copy_fixture, embeddings, images, with_head_kind

OUTSIDE = b"outside the bundle: must never change\n"


# ------------------------------------------------------------ fault matrix
def test_every_write_of_every_operation_fails_safely(tmp_path, record_property):
    trials = run_matrix(tmp_path)
    bad = [t for t in trials if t.problems]
    assert not bad, "\n".join(f"{t.op} {t.mode} at {t.call} (#{t.point}): {t.problems}" for t in bad[:10])
    ops = {t.op for t in trials}
    assert len(ops) == 11 and len(trials) > 300
    for op in ops:  # every operation was made to fail before its commit point, and returned after it
        outcomes = {t.outcome for t in trials if t.op == op}
        assert "raised" in outcomes and outcomes & {"returned", "warned"}, (op, outcomes)
    record_property("trials", len(trials))


def test_short_writes_alone_are_completed(tmp_path):
    d = copy_fixture(tmp_path / "b")
    real = storage.sys_write
    storage_calls = []

    def short(fd, data, offset):  # the kernel may write less than asked without an error
        storage_calls.append(len(data))
        return real(fd, data[: max(1, len(data) // 3)], offset)

    storage.sys_write = short
    try:
        store.add_examples(d, "x", embeddings(1))
        store.add_examples(d, "x", embeddings(2))
    finally:
        storage.sys_write = real
    assert len(storage_calls) > 4
    st = store.read_state(d)
    assert st.classes[-1] == "x" and int(st.head.counts[-1]) == 6


def test_cli_reports_a_full_disk_in_one_line(tmp_path):
    template, ops = prepare(tmp_path)
    for args in (["remove-class", "{d}", "x"], ["compact", "{d}"], ["rollback", "{d}", "--to", "2"]):
        for k in range(4):
            d = tmp_path / f"c{k}"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(template, d)
            with Injector(k, "enospc").armed():
                r = CliRunner().invoke(main, [a.format(d=d) for a in args])
            assert r.exit_code in (0, 1), r.output
            if r.exit_code == 1:
                assert "StorageError" in r.output and "no space left" in r.output, r.output
                assert isinstance(r.exception, SystemExit), r.exception  # no traceback


def test_cli_turns_any_os_error_into_one_line(tmp_path, monkeypatch):
    d = copy_fixture(tmp_path / "b")

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(d / "manifest.json"))

    monkeypatch.setattr(store, "history", denied)
    r = CliRunner().invoke(main, ["history", str(d)])
    assert r.exit_code == 1 and "permission denied" in r.output and isinstance(r.exception, SystemExit)


def test_failed_journal_append_is_taken_back(tmp_path):
    d = copy_fixture(tmp_path / "b")
    store.add_examples(d, "x", embeddings(1))
    size = (d / "journal-000000.log").stat().st_size
    with Injector(1, "short").armed(), pytest.raises(StorageError, match="no space left"):
        store.add_examples(d, "y", embeddings(2))  # half the record written, then the disk is full
    assert (d / "journal-000000.log").stat().st_size == size
    assert "y" not in store.read_state(d).classes


# ------------------------------------------------------------ all or nothing
def test_a_merge_cut_short_is_not_half_applied(tmp_path, monkeypatch):
    template, _ = prepare(tmp_path)
    monkeypatch.setattr(store, "SNAPSHOT_EVERY", 1000)  # the merged records stay after the snapshot point
    a = shutil.copytree(template, tmp_path / "a")
    before = store.read_state(a)
    store.merge(a, tmp_path / "other")
    jpath = a / store.read_state(a).manifest["journal"]["file"]
    merged = store.read_state(a)
    added = [r for r in merged.scan.records if r.extra.get("merged_from")]
    assert len(added) == 41 and added[0].extra["batch"] == [1, 41]
    data = jpath.read_bytes()
    for cut in (added[20].end, added[40].end - 1, added[0].end):
        jpath.write_bytes(data[:cut])
        store._WRITER_CACHE.clear()
        st = store.read_state(a, verify="state", full=False)
        assert st.classes == before.classes and st.seq == before.seq, cut
        assert st.scan.discarded > 0 and "incomplete batch" in st.scan.problem


def test_a_batch_add_cut_short_adds_nothing(tmp_path):
    d = copy_fixture(tmp_path / "b")
    store.add_examples(d, "x", embeddings(1))
    before = store.read_state(d)
    store.add_batch(d, [(f"n{i}", embeddings(20 + i, 2)) for i in range(6)])
    jpath = d / "journal-000000.log"
    full = jpath.read_bytes()
    assert store.read_state(d).classes[-6:] == [f"n{i}" for i in range(6)]
    jpath.write_bytes(full[: (before.scan.end + len(full)) // 2])  # power cut in the middle of the append
    store._WRITER_CACHE.clear()
    assert store.read_state(d).classes == before.classes
    store.add_examples(d, "y", embeddings(3))  # the torn batch is truncated, the journal goes on
    assert store.read_state(d, verify=True).classes == before.classes + ["y"]


# ------------------------------------------------------------ leftovers
def test_leftovers_are_removed_at_the_next_update(tmp_path):
    d = copy_fixture(tmp_path / "b")
    store.add_examples(d, "x", embeddings(1))
    (d / ".manifest.json.99999.tmp").write_bytes(b"{")
    (d / ".journal-000000.log.1.ab.tmp").write_bytes(b"x")
    (d / "head-000009.npz").write_bytes(b"stale")
    store.add_examples(d, "y", embeddings(2))  # journal-only: no snapshot
    names = {p.name for p in d.iterdir()}
    assert not {".manifest.json.99999.tmp", ".journal-000000.log.1.ab.tmp", "head-000009.npz"} & names


def test_killed_merge_output_is_cleaned_by_the_next_merge(tmp_path):
    template, _ = prepare(tmp_path)
    dead = tmp_path / ".out.999999999.abc.tmp"  # no such pid
    dead.mkdir()
    (dead / "manifest.json").write_text("{}")
    alive = tmp_path / f".out.{os.getpid()}.abc.tmp"  # a merge still running
    alive.mkdir()
    store.merge(template, tmp_path / "other", tmp_path / "out")
    assert not dead.exists() and alive.exists() and (tmp_path / "out" / "manifest.json").is_file()


def test_optimised_model_cache_failure_means_no_cache(tmp_path, monkeypatch):
    d = copy_fixture(tmp_path / "b")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "sys_rename", full)
    b = Bundle.load(d)
    assert b.session_source == "direct" and b.predict(images(1)).labels
    left = [p.name for p in (d / ".ort-cache").iterdir()] if (d / ".ort-cache").exists() else []
    assert not left, left


# ------------------------------------------------------------ symbolic links
@pytest.fixture
def outside(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_bytes(OUTSIDE)
    return target


def _planted(d, name, target):
    (d / name).unlink(missing_ok=True)
    os.symlink(target, d / name)


@pytest.mark.parametrize("name", [".lock", "journal-000000.log", "head-000001.npz", "base-000001.npz",
                                  "manifest.json", "head-000000.npz", "backbone.onnx", ".ort-cache"])
def test_no_update_writes_through_a_planted_link(tmp_path, outside, name):
    d = copy_fixture(tmp_path / "b")
    _planted(d, name, outside)
    for op in (lambda: store.add_examples(d, "x", embeddings(1)), lambda: store.compact(d),
               lambda: store.snapshot(d), lambda: store.remove_class(d, "alpha")):
        with pytest.raises(UnsafeFileError, match="symbolic link"):
            op()
    with pytest.raises(UnsafeFileError):
        Bundle.load(d)
    assert outside.read_bytes() == OUTSIDE


def test_a_link_under_a_temp_name_is_removed_not_followed(tmp_path, outside):
    d = copy_fixture(tmp_path / "b")
    _planted(d, ".manifest.json.123.tmp", outside)
    store.add_examples(d, "x", embeddings(1))  # the writer's lock removes temp names first
    assert not (d / ".manifest.json.123.tmp").exists() and outside.read_bytes() == OUTSIDE


def test_write_primitives_never_follow_links(tmp_path, outside):
    d = tmp_path / "d"
    d.mkdir()
    os.symlink(outside, d / "head-000001.npz")
    storage.write_new_file(d / "head-000001.npz", b"new")  # the link is replaced, not followed
    os.symlink(outside, d / "manifest.json")
    storage.atomic_write_bytes(d / "manifest.json", b"{}")
    os.symlink(outside, d / "journal-000003.log")
    with pytest.raises(UnsafeFileError):
        journal.append(d / "journal-000003.log", 0, [journal.Record(1, "add", "x", "0" * 16, "t", embeddings(1))],
                       journal.genesis("x" * 8))
    os.symlink(outside, d / ".lock")
    with pytest.raises(UnsafeFileError), storage.locked(d):
        pass
    assert outside.read_bytes() == OUTSIDE
    assert not (d / "head-000001.npz").is_symlink() and (d / "head-000001.npz").read_bytes() == b"new"


def test_cache_directory_link_is_not_used(tmp_path):
    d = copy_fixture(tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, d / ".ort-cache")
    with pytest.raises(UnsafeFileError):  # a link in the bundle directory: refused as a whole
        Bundle.load(d)
    from edgecl_runtime.session import create_session

    create_session(d / "backbone.onnx", "0" * 64, ["CPUExecutionProvider"])
    assert list(elsewhere.iterdir()) == []


def test_cache_file_links_are_replaced_not_followed(tmp_path, outside):
    d = copy_fixture(tmp_path / "b")
    Bundle.load(d)
    for p in (d / ".ort-cache").iterdir():
        p.unlink()
        os.symlink(outside, p)
    b = Bundle.load(d)
    assert b.session_source == "built" and outside.read_bytes() == OUTSIDE
    assert not any(p.is_symlink() for p in (d / ".ort-cache").iterdir())


def test_merge_output_is_never_written_through_a_link(tmp_path, outside):
    template, _ = prepare(tmp_path)
    os.symlink(outside, tmp_path / "out")
    with pytest.raises(Exception) as exc:
        store.merge(template, tmp_path / "other", tmp_path / "out")
    assert "exists" in str(exc.value) and outside.read_bytes() == OUTSIDE


# ------------------------------------------------------------ bombs and nesting
def _png_header(path, width, height):
    """A PNG whose header declares width x height (the image data is a few bytes: decoding would fail)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(50_000, 50_000), (9_000, 9_000)])
def test_image_files_over_the_pixel_budget_are_refused_from_the_header(tmp_path, size):
    p = _png_header(tmp_path / "big.png", *size)
    with pytest.raises(LimitExceededError, match="pixels|decompression"):
        read_images([p])


def test_npy_over_the_pixel_budget_is_refused_before_loading(tmp_path):
    p = tmp_path / "big.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (100_000, 100_000, 3)})
    tracemalloc.start()
    with pytest.raises(LimitExceededError, match="pixels"):
        read_images([p])
    assert tracemalloc.get_traced_memory()[1] < 10 << 20
    tracemalloc.stop()


def test_predict_and_add_class_refuse_arrays_over_the_budget(tmp_path, monkeypatch):
    b = Bundle.load(copy_fixture(tmp_path / "b"))
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3))  # no memory behind it
    with pytest.raises(LimitExceededError):
        b.predict(huge)
    with pytest.raises(LimitExceededError):
        b.add_class("huge", [huge])
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 100)  # configurable
    with pytest.raises(LimitExceededError, match="limit is 100"):
        b.predict(images(1, 1))
    assert "huge" not in Bundle.load(b.path).classes


def _reseal(d, mutate):
    """Edit the manifest and recompute its checksum, as anyone can (a signature, if any, is kept)."""
    m = json.loads((d / "manifest.json").read_text())
    mutate(m)
    m["checksum"] = manifest_checksum(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_head_file_bomb_is_refused_before_decompression(tmp_path):
    d = copy_fixture(tmp_path / "b")
    np.savez_compressed(d / "head-000000.npz", prototypes=np.zeros((20_000, 1000), np.float32),
                        counts=np.ones(3, np.int64))  # 80 MB declared, ~80 KB on disk
    _reseal(d, lambda m: m["files"].update({"head-000000.npz": file_entry(d / "head-000000.npz")}))
    tracemalloc.start()
    with pytest.raises(CorruptBundleError, match="declares .* bytes|shape"):
        store.read_state(d)
    assert tracemalloc.get_traced_memory()[1] < 20 << 20
    tracemalloc.stop()


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    d = copy_fixture(tmp_path / "b")
    _reseal(d, lambda m: m.update({"learner": json.loads("[" * 50 + "]" * 50)}))
    with pytest.raises(CorruptBundleError, match="nested deeper"):
        store.read_state(d)
    (d / "manifest.json").write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    with pytest.raises(CorruptBundleError, match="nested deeper"):
        store.read_state(d)
    r = CliRunner().invoke(main, ["history", str(d)])
    assert r.exit_code == 1 and "nested deeper" in r.output and isinstance(r.exception, SystemExit)


def test_deeply_nested_journal_record_is_not_replayed(tmp_path):
    d = copy_fixture(tmp_path / "b")
    store.add_examples(d, "x", embeddings(1))
    st = store.read_state(d)
    payload = b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n"
    import hashlib

    digest = hashlib.sha256(bytes.fromhex(st.scan.digest) + payload).digest()
    with open(d / "journal-000000.log", "ab") as f:
        f.write(struct.pack("<4sI32s", b"ECJ1", len(payload), digest) + payload)
    st2 = store.read_state(d)  # the forged last record is discarded like a torn write
    assert st2.classes == st.classes and "nested deeper" in st2.scan.problem


@pytest.mark.parametrize("name", ["../evil\n", "a/b", " pad", "", "\u202eevil"])
def test_manifest_class_names_are_validated(tmp_path, name):
    d = copy_fixture(tmp_path / "b")
    _reseal(d, lambda m: m["classes"].__setitem__(1, name))
    with pytest.raises(CorruptBundleError, match=r"classes\[1\]|non-empty"):
        store.read_state(d)


# ------------------------------------------------------------ remove_class exact
@pytest.mark.parametrize("kind", ["prototype_cosine", "ridge", "gaussian", "subspace_cosine"])
def test_add_then_remove_restores_every_score(tmp_path, kind):
    d = with_head_kind(copy_fixture(tmp_path / "b"), kind)
    store.add_examples(d, "x", embeddings(9, 4))
    q = embeddings(99, 20)
    before = store.read_state(d).head.scores(q)
    store.add_examples(d, "new", embeddings(1, 10))
    store.add_examples(d, "x", embeddings(3, 2))  # another class changes in between
    store.add_examples(d, "new", embeddings(2, 3))
    store.remove_class(d, "new")
    store.remove_class(d, "x")
    store.add_examples(d, "x", embeddings(9, 4))  # x as before: removed exactly, added again
    for st in (store.read_state(d), store.read_state(d, verify=True)):
        after = st.head.scores(q)
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
        if kind != "ridge":  # additive per-class statistics: bit for bit
            np.testing.assert_array_equal(after, before)
    with_ridge = store.read_state(d)
    assert with_ridge.classes[-1] == "x" and "new" not in with_ridge.classes


def test_removing_a_base_class_keeps_the_others_fitted(tmp_path):
    d = with_head_kind(copy_fixture(tmp_path / "b"), "ridge")
    st = store.remove_class(d, "beta")  # its training examples are not known: they stay in G
    assert st.classes == ["alpha", "gamma"]
    rec = store.read_state(d, full=True).scan.records[-1]
    assert rec.op == "remove_class" and rec.embeddings is None


# ------------------------------------------------------------ signatures
@pytest.fixture
def keys(tmp_path):
    r = CliRunner().invoke(main, ["keygen", str(tmp_path / "pub-key")])
    assert r.exit_code == 0, r.output
    other = signing.generate_key(tmp_path / "other-key")
    return tmp_path / "pub-key", tmp_path / "pub-key.pub", other[1]


def test_signed_bundle_end_to_end(tmp_path, keys):
    key, pub, foreign = keys
    d = copy_fixture(tmp_path / "b")
    store.add_examples(d, "x", embeddings(1))
    assert CliRunner().invoke(main, ["--public-key", str(pub), "info", str(d)]).exit_code == 1  # unsigned
    r = CliRunner().invoke(main, ["sign", str(d), "--key", str(key)])
    assert r.exit_code == 0 and "signed" in r.output, r.output
    r = CliRunner().invoke(main, ["--public-key", str(pub), "info", str(d)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["--public-key", str(foreign), "info", str(d)])
    assert r.exit_code == 1 and "does not trust" in r.output
    # a pinned device cannot update without a key it trusts, and signs its updates with one
    r = CliRunner().invoke(main, ["--public-key", str(pub), "remove-class", str(d), "x"])
    assert r.exit_code == 1 and "SignatureError" in r.output
    b = Bundle.load(d, public_key=pub, signing_key=key)
    b.add_class("y", images(2))
    b.remove_class("x")
    assert Bundle.load(d, public_key=pub).classes[-1] == "y"
    # an update appended without the key (another process, a hostile tool) is refused
    store.add_examples(d, "evil", embeddings(3))
    with pytest.raises(SignatureError, match="not signed"):
        Bundle.load(d, public_key=pub)


def test_forged_signed_bundle_is_refused(tmp_path, keys, monkeypatch):
    key, pub, _ = keys
    d = copy_fixture(tmp_path / "b")
    signing.sign_bundle(d, key)
    _reseal(d, lambda m: m["classes"].__setitem__(0, "forged"))  # the checksum is recomputed: integrity only
    assert store.read_state(d).classes[0] == "forged"
    with pytest.raises(SignatureError, match="does not match"):
        Bundle.load(d, public_key=pub)
    monkeypatch.setenv(signing.ENV_PUBLIC, str(pub))
    with pytest.raises(SignatureError):
        store.read_state(d)


def test_merging_a_foreign_device_is_refused(tmp_path, keys):
    key, pub, foreign = keys
    a = copy_fixture(tmp_path / "a")
    signing.sign_bundle(a, key)
    b = shutil.copytree(a, tmp_path / "b2")
    store.add_examples(b, "unsigned", embeddings(4))  # an update by a device without the key
    policy = signing.make_policy(pub, key)
    with signing.using(policy), pytest.raises(SignatureError):
        store.merge(a, b)
    c = shutil.copytree(a, tmp_path / "c")
    with signing.using(policy):
        store.add_examples(c, "signed", embeddings(5))
        st = store.merge(a, c)
    assert st.classes[-1] == "signed"
    with signing.using(signing.make_policy(pub)):
        assert store.read_state(a).classes[-1] == "signed"


def test_unsigned_writer_drops_a_stale_signature(tmp_path, keys):
    key, pub, _ = keys
    d = copy_fixture(tmp_path / "b")
    signing.sign_bundle(d, key)
    store.compact(d)
    assert "signature" not in json.loads((d / "manifest.json").read_text())
    with pytest.raises(SignatureError, match="not signed"):
        Bundle.load(d, public_key=pub)


# ------------------------------------------------------------ the matrix is exhaustive
def test_every_mode_is_tried_at_every_call(tmp_path):
    template, ops = prepare(tmp_path)
    add = ops[0]
    reference, calls = reference_of(add, template, tmp_path / "w")
    assert calls[0].startswith("open") and "fsync" in calls
    results = [run_trial(add, template, tmp_path / "w", k, m, reference) for m in MODES for k in range(len(calls))]
    assert all(not t.problems for t in results)


# ------------------------------------------------------------ the CLI never shows a traceback
def test_cli_on_damaged_bundles_fails_in_one_line(tmp_path):
    d0 = copy_fixture(tmp_path / "origin")
    store.add_examples(d0, "x", embeddings(1))
    store.add_examples(d0, "y", embeddings(2))
    rng = np.random.default_rng(0)
    files = ["manifest.json", "journal-000000.log", "head-000000.npz", "head-000001.npz"]
    for trial in range(40):
        d = tmp_path / f"d{trial}"
        shutil.copytree(d0, d)
        p = d / files[trial % len(files)]
        data = bytearray(p.read_bytes())
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(1 + trial % 4):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(data))
        for args in (["history", str(d)], ["info", str(d), "--json"], ["remove-class", str(d), "x"], ["compact", str(d)]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code in (0, 1) and (r.exception is None or isinstance(r.exception, SystemExit)), (
                args, p.name, r.output, r.exception)


def test_export_sign_makes_a_bundle_a_pinned_device_accepts(trained, tmp_path, keys):
    key, pub, foreign = keys
    from edgecl.cli import train as train_cli

    _, run_dir = trained
    out = tmp_path / "signed"
    r = CliRunner().invoke(train_cli.export_cmd, [str(run_dir), str(out), "--sign", str(key)])
    assert r.exit_code == 0 and "signed with key" in r.output, r.output
    b = Bundle.load(out, public_key=pub)
    assert b.info()["signed_by"] == signing.key_id(signing.load_public_key(pub))
    with pytest.raises(SignatureError):
        Bundle.load(out, public_key=foreign)


@pytest.mark.parametrize("name", ["model.onnx", "head-000001.safetensors", "journal-000000.log", ".lock"])
def test_format3_bundle_refuses_planted_links(bundle_dir, outside, name):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["format_version"] == 3 and (bundle_dir / "model.onnx").is_file()
    _planted(bundle_dir, name, outside)
    with pytest.raises(UnsafeFileError):
        store.add_examples(bundle_dir, "x", np.ones((2, int(m["backbone"]["embedding_dim"])), np.float32))
    with pytest.raises(UnsafeFileError):
        Bundle.load(bundle_dir)
    assert outside.read_bytes() == OUTSIDE
