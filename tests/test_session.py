"""Session creation: providers, threads, IO binding, the optimised-model cache; streaming and embedding paths."""

import json
import os

import numpy as np
import pytest

from edgecl_runtime import Bundle, DeviceUnavailableError, InvalidInputError
from edgecl_runtime import session as rs
from edgecl_runtime.manifest import read_manifest, verify_files

from conftest import class_images

CPU, CUDA = rs.CPU_EP, rs.CUDA_EP


# ------------------------------------------------------------------ providers (no GPU needed)
@pytest.mark.parametrize(
    "device, available, expected",
    [
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [CPU], [CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_provider_selection(device, available, expected):
    assert rs.select_providers(device, available) == expected
    assert rs.use_io_binding(expected) == (expected[0] == CUDA)


def test_cuda_requested_without_cuda_and_bad_device_are_clear_errors():
    with pytest.raises(DeviceUnavailableError, match="onnxruntime-gpu"):
        rs.select_providers("cuda", [CPU])
    with pytest.raises(InvalidInputError, match="device must be one of"):
        rs.select_providers("gpu", [CPU])


def test_io_binding_path_gives_the_same_embeddings(bundle_dir, shapes_new):
    """The CUDA code path (IO binding) runs on the CPU provider too: same numbers as plain run."""
    b = Bundle.load(bundle_dir, device="cpu")
    x = b.preprocess(shapes_new[1].images[:7])
    feeds = b.head.graph_inputs()
    for output in ("features", "scores"):
        plain = rs.Runner(b.session, io_binding=False)(x, feeds, output)
        bound = rs.Runner(b.session, io_binding=True)(x, feeds, output)
        np.testing.assert_array_equal(plain, bound)


# ---------------------------------------------------------------------------- threads, options
def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_threads_option_sets_the_thread_pool(bundle_dir):
    before = _threads()
    one = Bundle.load(bundle_dir, device="cpu", threads=1, cache=False)
    after_one = _threads()
    four = Bundle.load(bundle_dir, device="cpu", threads=4, cache=False)
    after_four = _threads()
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert four.session.get_session_options().intra_op_num_threads == 4
    assert after_one - before == 0  # one thread: the caller's
    assert after_four - after_one == 3  # a pool of 3 more
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(InvalidInputError, match="threads"):
            Bundle.load(bundle_dir, device="cpu", threads=bad)
    with pytest.raises(InvalidInputError, match="optimisation level"):
        Bundle.load(bundle_dir, device="cpu", optimize="max")


# ------------------------------------------------------------------------ optimised-model cache
def _cache_files(path):
    d = path / rs.CACHE_DIR
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_cache_is_built_then_used_and_leaves_checksums_alone(bundle_dir, shapes_new):
    x = shapes_new[1].images[:9]
    first = Bundle.load(bundle_dir, device="cpu")
    assert first.session_source == "built"
    files = _cache_files(bundle_dir)
    assert len(files) == 2 and {f.rsplit(".", 1)[1] for f in files} == {"onnx", "json"}
    second = Bundle.load(bundle_dir, device="cpu")
    assert second.session_source == "cached"
    direct = Bundle.load(bundle_dir, device="cpu", cache=False)
    assert direct.session_source == "direct"
    np.testing.assert_allclose(second.embed(x), direct.embed(x), atol=1e-5)
    assert second.predict(x).labels == direct.predict(x).labels
    m = read_manifest(bundle_dir)
    assert not any(rs.CACHE_DIR in name for name in m["files"])
    verify_files(bundle_dir, m)  # the cache is outside the checksummed set
    assert rs.clear_cache(bundle_dir) == 2 and not (bundle_dir / rs.CACHE_DIR).exists()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "meta", "no-meta"])
def test_corrupt_cache_is_rebuilt_never_breaks_load(bundle_dir, shapes_new, damage):
    x = shapes_new[1].images[:5]
    ref = Bundle.load(bundle_dir, device="cpu", cache=False).predict(x)
    Bundle.load(bundle_dir, device="cpu")
    model = next((bundle_dir / rs.CACHE_DIR).glob("*.onnx"))
    meta = model.with_suffix(".json")
    if damage == "garbage":
        model.write_bytes(b"not a model" * 100)
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "meta":
        meta.write_text("{not json")
    else:
        meta.unlink()
    b = Bundle.load(bundle_dir, device="cpu")
    assert b.session_source == "built"
    assert b.predict(x).labels == ref.labels
    assert Bundle.load(bundle_dir, device="cpu").session_source == "cached"
    assert len(_cache_files(bundle_dir)) == 2


def test_cache_of_another_onnxruntime_is_stale_and_replaced(bundle_dir, monkeypatch):
    Bundle.load(bundle_dir, device="cpu")
    old = _cache_files(bundle_dir)
    monkeypatch.setattr(rs.ort, "__version__", "0.0.1")
    assert Bundle.load(bundle_dir, device="cpu").session_source == "built"
    new = _cache_files(bundle_dir)
    assert len(new) == 2 and set(new).isdisjoint(old)  # the stale entry was pruned
    info = json.loads(next((bundle_dir / rs.CACHE_DIR).glob("*.json")).read_text())
    assert info["onnxruntime"] == "0.0.1"


def test_unwritable_cache_falls_back_to_a_plain_session(bundle_dir, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(rs, "_write_cache", refuse)
    b = Bundle.load(bundle_dir, device="cpu")
    assert b.session_source == "direct" and len(b.classes) == 30


# --------------------------------------------------------------------------- stream and embed
def test_stream_equals_batch_prediction(bundle_dir, shapes_new):
    b = Bundle.load(bundle_dir, device="cpu")
    frames = shapes_new[1].images[:23]
    batch = b.predict(frames, top_k=3)
    # other batch sizes may sum in another order: scores agree to 1e-6, so the label and the top-3 order may
    # differ only on a frame where two of the batch's best four scores are within 2e-6
    best4 = -np.sort(-b.scores(frames), axis=1)[:, :4]
    tied = np.any(best4[:, :-1] - best4[:, 1:] <= 2e-6, axis=1)
    want = [[c for c, _ in row] for row in batch.top_k]
    for bs in (1, 4, 64):
        stream = list(b.predict_stream(iter(list(frames)), batch_size=bs, top_k=3))
        assert len(stream) == 23 and all(len(p) == 1 for p in stream)
        np.testing.assert_allclose(np.concatenate([p.scores for p in stream]), batch.scores, atol=1e-6)
        got = [[c for c, _ in p.top_k[0]] for p in stream]
        assert [i for i, p in enumerate(stream) if (got[i], p.labels[0]) != (want[i], batch.labels[i])
                and not tied[i]] == []
        np.testing.assert_array_equal(np.concatenate([p.indices for p in stream])[~tied], batch.indices[~tied])
    mixed = [frames[0], frames[1][:20, :25], frames[2]]  # frames of different sizes still work
    assert len(list(b.predict_stream(mixed, batch_size=2))) == 3
    with pytest.raises(InvalidInputError, match="batch_size"):
        next(b.predict_stream(frames, batch_size=0))


def test_embed_batches_and_add_class_reports_split_timings(bundle_dir, shapes_new):
    b = Bundle.load(bundle_dir, device="cpu")
    x = shapes_new[1].images[:10]
    np.testing.assert_allclose(b.embed(x, batch_size=3), b.embed(x), atol=1e-5)
    res = b.add_class("violet-star", class_images(shapes_new[0], shapes_new[0].class_names[95], 5))
    assert res.embed_seconds > 0 and res.update_seconds > 0
    assert res.embed_seconds + res.update_seconds == pytest.approx(res.seconds, rel=0.05, abs=1e-3)


def test_bench_cli_prints_and_writes_every_field(bundle_dir, tmp_path):
    from click.testing import CliRunner

    from edgecl.cli import main

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", str(bundle_dir), "--device", "cpu", "--threads", "1", "--repeats", "3",
                                    "--batch-size", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for text in ("cold start", "predict batch 1", "images/s", "peak RSS", "bundle on disk", "add-class, 5 examples"):
        assert text in res.output
    r = json.loads(out.read_text())["device"]
    assert r["threads"] == 1 and r["device"] == "cpu" and r["precision"] == "fp32"
    assert 0 < r["predict_b1"]["p50_ms"] <= r["predict_b1"]["p95_ms"]
    assert r["throughput_images_per_s"] > 0 and r["import_runtime_s"] > 0
    assert 10 < r["peak_rss_batch1_mib"] <= r["peak_rss_mib"]
    assert r["bundle_bytes"] > r["onnx_bytes"] > 1e6
    a = r["add_class"]
    assert a["examples"] == 5 and a["embed_ms"] > 0 and a["update_ms"] > 0 and a["head_update_ms"] > 0
    assert all(rs.CACHE_DIR not in n for n in read_manifest(bundle_dir)["files"])


def test_cli_threads_option_reaches_the_session(bundle_dir, tmp_path, monkeypatch, shapes_new):
    from click.testing import CliRunner

    from edgecl.cli import main

    seen = {}
    real = Bundle.load.__func__

    def spy(cls, path, **kw):
        seen.update(kw)
        return real(cls, path, **kw)

    monkeypatch.setattr(Bundle, "load", classmethod(spy))
    np.save(tmp_path / "x.npy", shapes_new[1].images[:2])
    res = CliRunner().invoke(main, ["predict", str(bundle_dir), str(tmp_path / "x.npy"), "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert seen["threads"] == 1 and res.output.count("x.npy[") == 2
