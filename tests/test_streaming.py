"""Streamed data (edgecl.data.stream, edgecl.data.shards): WebDataset shards and streamed folders, read by
row without loading the set; the memory-mapped embedding cache fed batch by batch."""

import json
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl.data import DataError, load_dataset
from edgecl.data.shards import ShardIndex, shard_urls
from edgecl.data.stream import ShardSource, StreamImages, load_stream, write_split_shards
from edgecl.features import EmbeddingStore

SIZE = (32, 32)


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes:10", train_per_class=6, test_per_class=3)


@pytest.fixture(scope="module")
def shard_dir(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "wds"
    write_split_shards(*shapes, out, per_shard=16)
    return out


def rows(ds):
    return ds.images[np.arange(len(ds))]


def test_shards_round_trip(shapes, shard_dir):
    train, test = shapes
    assert sorted(p.name for p in shard_dir.iterdir())[:2] == ["classes.json", "test-000000.tar"]
    assert len(list(shard_dir.glob("train-*.tar"))) == 4  # 60 samples, 16 a shard
    s_train, s_test = load_dataset(f"wds:{shard_dir}", image_size=SIZE)
    assert isinstance(s_train.images, StreamImages) and s_train.images.shape == train.images.shape
    for mem, streamed in ((train, s_train), (test, s_test)):
        np.testing.assert_array_equal(rows(streamed), mem.images)
        np.testing.assert_array_equal(streamed.labels, mem.labels)
        assert streamed.class_names == mem.class_names
    np.testing.assert_array_equal(s_train.images[[5, 0, 59]], train.images[[5, 0, 59]])  # random access by row


def test_shards_read_by_the_webdataset_package(shapes, shard_dir):
    """The format is WebDataset's: its own reader gives the same images and labels."""
    import webdataset as wds

    urls = str(shard_dir / "train-{000000..000003}.tar")
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls"))
    np.testing.assert_array_equal(np.stack([im for im, _ in pairs]), shapes[0].images)
    assert [int(y) for _, y in pairs] == shapes[0].labels.tolist()


def test_brace_pattern_is_split_like_a_folder(shard_dir):
    train, test = load_dataset(f"wds:{shard_dir}/train-{{000000..000003}}.tar", image_size=SIZE, test_fraction=0.5)
    assert len(train) + len(test) == 60 and len(test) == 30
    assert sorted(set(test.labels.tolist())) == list(range(10))  # stratified: every class held out
    assert len(set(train.images.rows) | set(test.images.rows)) == 60


def test_rank_split_partitions_the_training_shards(shard_dir):
    """Rank r of w keeps shards r, r+w, ...: together the ranks read every training sample once."""
    shards = shard_urls(str(shard_dir / "train-*.tar"))
    assert shard_urls(str(shard_dir / "train-*.tar"), rank=1, world_size=2) == shards[1::2]
    parts = [load_stream(f"wds:{shard_dir}", SIZE, rank=r, world_size=2) for r in range(2)]
    assert sum(len(tr) for tr, _ in parts) == 60
    assert all(len(te) == 30 for _, te in parts)  # the test split is whole on every rank
    assert sorted(np.concatenate([tr.labels for tr, _ in parts]).tolist()) == sorted(load_stream(
        f"wds:{shard_dir}", SIZE)[0].labels.tolist())
    with pytest.raises(DataError, match="rank 4 gets none"):
        shard_urls(str(shard_dir / "train-*.tar"), rank=4, world_size=5)


def test_streamed_folder_equals_the_loaded_folder(shapes, tmp_path):
    from PIL import Image

    train, _ = shapes
    for i, (image, label) in enumerate(zip(train.images, train.labels)):
        folder = tmp_path / "set" / train.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((40, 40)).save(folder / f"{i:03d}.png")
    mem_train, mem_test = load_dataset(str(tmp_path / "set"), image_size=SIZE, seed=3)
    s_train, s_test = load_dataset(f"stream:{tmp_path / 'set'}", image_size=SIZE, seed=3)
    np.testing.assert_array_equal(rows(s_train), mem_train.images)  # resized 40 -> 32 px the same way
    np.testing.assert_array_equal(rows(s_test), mem_test.images)
    np.testing.assert_array_equal(s_train.labels, mem_train.labels)
    with pytest.raises(TypeError, match="whole data set into memory"):
        np.asarray(s_train.images)
    # the folder copied into shards, files as they are (no re-encoding)
    report = write_split_shards(s_train, s_test, tmp_path / "wds", per_shard=100)
    w_train, _ = load_dataset(f"wds:{tmp_path / 'wds'}", image_size=SIZE)
    np.testing.assert_array_equal(rows(w_train), mem_train.images)
    with tarfile.open(report["train"]["shards"][0]) as tar:
        first = tar.extractfile(tar.getmembers()[1]).read()
    assert first == open(s_train.images.source.paths[0], "rb").read()


def run(dataset, learner, args, cache_dir, monkeypatch):
    from edgecl.experiment import RunConfig, run_experiment

    monkeypatch.setattr("edgecl.experiment.default_cache_dir", lambda: cache_dir)
    cfg = RunConfig(dataset=dataset, learner=learner, learner_args=args, init_cls=5, increment=5,
                    train_per_class=6, test_per_class=3, engine="torch")
    return run_experiment(cfg, log=lambda s: None)


@pytest.mark.parametrize("learner,args", [("simplecil", {}), ("ranpac", {"M": 128})])
def test_training_from_shards_equals_training_in_memory(shard_dir, tmp_path, monkeypatch, learner, args):
    mem = run("shapes:10", learner, args, tmp_path / "a", monkeypatch)
    streamed = run(f"wds:{shard_dir}", learner, args, tmp_path / "b", monkeypatch)
    module = mem.learner.embedding_module()
    e_mem = mem.learner.features.embed(module, mem.train).numpy()
    e_str = streamed.learner.features.embed(streamed.learner.embedding_module(), streamed.train).numpy()
    np.testing.assert_allclose(e_str, e_mem, rtol=0, atol=1e-6)
    a, b = mem.learner.state(), streamed.learner.state()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
    assert streamed.metrics.overall == mem.metrics.overall


def test_second_learner_reads_the_memory_mapped_cache(shard_dir, tmp_path, monkeypatch):
    first = run(f"wds:{shard_dir}", "simplecil", {}, tmp_path, monkeypatch)
    assert first.learner.features.store.misses == 2  # train and test split, each embedded once
    (matrix,) = [m for m in first.learner.features._matrices.values() if m.shape[0] == 60]
    assert isinstance(matrix, np.memmap)
    second = run(f"wds:{shard_dir}", "ranpac", {"M": 64}, tmp_path, monkeypatch)
    counts = second.learner.features.store_counts()
    assert counts["misses"] == 0 and counts["hits"] == 2, counts  # nothing re-embedded


def test_store_writes_row_blocks_as_they_come(tmp_path):
    m = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    store = EmbeddingStore(tmp_path)
    store.write("whole", m)
    store.write("blocks", (m[i : i + 8] for i in range(0, 50, 8)))
    np.testing.assert_array_equal(store.read("blocks"), m)
    whole, blocks = (tmp_path / "whole.emb").read_bytes(), (tmp_path / "blocks.emb").read_bytes()
    assert whole.split(b"\n", 1)[1] == blocks.split(b"\n", 1)[1]
    header = json.loads(blocks.split(b"\n", 1)[0])
    assert header["shape"] == [50, 7] and header["key"] == "blocks"
    np.testing.assert_array_equal(EmbeddingStore.rows(store.read("blocks"), [3, 1]), m[[3, 1]])
    with pytest.raises(ValueError, match="matrices"):
        store.write("bad", iter([m[:2], m[:2, :3]]))
    assert not store.path("bad").exists() and not list(tmp_path.glob(".*.tmp"))


def damage(path, how):
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[len(raw) // 2 :]
    elif how == "header":  # the third member's tar header overwritten
        with tarfile.open(path) as tar:
            at = tar.getmembers()[2].offset
        raw[at : at + 100] = b"\xff" * 100
    elif how == "not-a-tar":
        raw = bytearray(b"this is not a tar file" * 100)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "header", "not-a-tar"])
def test_corrupt_shard_is_a_clear_data_error(shapes, tmp_path, how):
    write_split_shards(*shapes, tmp_path, per_shard=16)
    bad = tmp_path / "train-000001.tar"
    damage(bad, how)
    with pytest.raises(DataError, match="train-000001.tar"):
        load_dataset(f"wds:{tmp_path}", image_size=SIZE)


def test_corrupt_image_and_missing_label_are_data_errors(tmp_path):
    import io

    def shard(name, members):
        with tarfile.open(tmp_path / name, "w") as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    shard("train-000000.tar", [("a.png", b"\x89PNG not really"), ("a.cls", b"0")])
    train = ShardIndex.scan([str(tmp_path / "train-000000.tar")])
    images = StreamImages(ShardSource(train), [0], SIZE)
    with pytest.raises(DataError, match=r"cannot decode image .*train-000000.tar"):
        images[[0]]
    shard("x-000000.tar", [("a.png", b"x"), ("b.png", b"y"), ("b.cls", b"1")])
    with pytest.raises(DataError, match="sample 'a' lacks a cls"):
        ShardIndex.scan([str(tmp_path / "x-000000.tar")])
    shard("y-000000.tar", [("a.png", b"x"), ("a.cls", b"cat")])
    with pytest.raises(DataError, match="not an integer"):
        ShardIndex.scan([str(tmp_path / "y-000000.tar")])
    with pytest.raises(DataError, match="no shards match"):
        load_dataset(f"wds:{tmp_path}/none-*.tar")


def test_cli_writes_shards(tmp_path):
    from edgecl.cli.data import data

    res = CliRunner().invoke(data, ["shards", "shapes:10", str(tmp_path / "out"), "--per-shard", "100",
                                    "--train-per-class", "4", "--test-per-class", "2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["train"]["samples"] == 40 and report["test"]["samples"] == 20 and report["classes"] == 10
    again = CliRunner().invoke(data, ["shards", "shapes:10", str(tmp_path / "out")])
    assert again.exit_code != 0 and "already holds .tar shards" in again.output
