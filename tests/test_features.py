"""The embedding service (edgecl.features): reuse, invalidation, concurrency, corruption, engines, parity."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from edgecl.data import ArrayDataset
from edgecl.features import EmbeddingStore, EngineError, FeatureExtractor
from edgecl.features.engines import PARITY_ATOL, build_engine, pick_engine

SIZE = (3, 16, 16)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Net(nn.Module):
    """Conv + BatchNorm + ReLU + pool (+ an optional 'adapter' vector, as a PEFT state); counts images run."""

    def __init__(self, seed: int = 0, adapter: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-0.1, 0.1)
        self.bn.running_var.uniform_(0.5, 1.5)
        self.adapter = nn.Parameter(torch.zeros(8), requires_grad=False) if adapter else None
        self.seen = 0
        self.eval()

    def forward(self, x):
        self.seen += x.shape[0]
        z = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return z + self.adapter if self.adapter is not None else z


def data(seed: int = 0, n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 4, list("abcd"))


def extractor(cache_dir, mean=MEAN, engine="torch", batch_size=16) -> FeatureExtractor:
    return FeatureExtractor(SIZE, mean, STD, batch_size=batch_size, engine=engine, cache_dir=cache_dir)


def eager(net, ds, idx, mean=MEAN):
    from edgecl_runtime.preprocess import preprocess

    with torch.no_grad():
        return net(torch.from_numpy(preprocess(ds.images[idx], SIZE, mean, STD))).numpy()


def test_reuse_within_and_across_extractors(tmp_path):
    net, ds = Net(), data()
    fx = extractor(tmp_path)
    a = fx.embed(net, ds, [3, 1, 7])
    assert net.seen == len(ds)  # a frozen module's whole split is embedded once
    b = fx.embed(net, ds, np.arange(10, 30))
    other = extractor(tmp_path).embed(net, ds, [7, 3])  # another learner / run on the same cache
    assert net.seen == len(ds)
    np.testing.assert_allclose(a.numpy(), eager(net, ds, [3, 1, 7]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), eager(net, ds, np.arange(10, 30)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(other.numpy(), a.numpy()[[2, 0]])
    assert fx.store.misses == 1 and fx.store.hits == 0


def test_changing_module_bypasses_the_cache(tmp_path):
    net, ds = Net(), data()
    fx = extractor(tmp_path)
    out = fx.embed(net, ds, [5, 2], frozen=False)
    assert net.seen == 2 and not any(tmp_path.iterdir())
    np.testing.assert_allclose(out.numpy(), eager(net, ds, [5, 2]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("change", ["weights", "adaptation", "preprocessing", "data_seed"])
def test_any_change_of_the_key_is_a_miss(tmp_path, change):
    net, ds = Net(adapter=True), data()
    first = extractor(tmp_path).embed(net, ds, [0, 1])
    fx, mean = extractor(tmp_path), MEAN
    if change == "weights":
        with torch.no_grad():
            net.conv.weight.mul_(1.5)
    elif change == "adaptation":
        with torch.no_grad():
            net.adapter.add_(1.0)
    elif change == "preprocessing":
        mean = (0.4, 0.5, 0.5)
        fx = extractor(tmp_path, mean=mean)
    else:
        ds = data(seed=1)
    seen = net.seen
    second = fx.embed(net, ds, [0, 1])
    assert fx.store.misses == 1 and fx.store.hits == 0 and net.seen == seen + len(ds)
    np.testing.assert_allclose(second.numpy(), eager(net, ds, [0, 1], mean), rtol=0, atol=1e-6)
    assert not np.allclose(second.numpy(), first.numpy())
    assert len(list(tmp_path.glob("*.emb"))) == 2


def test_in_place_change_after_use_is_seen(tmp_path):
    """The state key follows in-place updates of the same module object (an optimizer step)."""
    net, ds = Net(), data()
    fx = extractor(tmp_path)
    before = fx.embed(net, ds, [0])
    with torch.no_grad():
        net.conv.bias.add_(0.5)
    after = fx.embed(net, ds, [0])
    np.testing.assert_allclose(after.numpy(), eager(net, ds, [0]), rtol=0, atol=1e-6)
    assert fx.store.misses == 2 and not np.allclose(before.numpy(), after.numpy())


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_damaged_file_is_rebuilt_never_read(tmp_path, damage):
    net, ds = Net(), data()
    good = extractor(tmp_path).embed(net, ds).numpy()
    (path,) = tmp_path.glob("*.emb")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) - 7])
    elif damage == "flip":
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])
    else:
        path.write_bytes(b"not json\n" + raw[raw.index(b"\n") + 1 :])
    fx = extractor(tmp_path)
    seen = net.seen
    again = fx.embed(net, ds).numpy()
    assert net.seen == seen + len(ds), "the damaged file must not be used"
    assert fx.store.rebuilt == 1 and fx.store.misses == 1
    np.testing.assert_array_equal(again, good)
    assert path.read_bytes() == raw  # rebuilt whole


def test_store_reads_back_what_it_wrote(tmp_path):
    store = EmbeddingStore(tmp_path)
    m = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert store.get_or_create("k", lambda: m) is not None
    np.testing.assert_array_equal(store.read("k"), m)
    assert store.read("other") is None
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


FILLER = textwrap.dedent(
    """
    import sys, time, hashlib
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_features import Net, data, extractor

    class Slow(Net):
        def forward(self, x):
            time.sleep(0.05)
            return super().forward(x)

    net = Slow()
    fx = extractor(sys.argv[1])
    out = fx.embed(net, data()).numpy()
    print(fx.store.misses, net.seen, hashlib.sha256(out.tobytes()).hexdigest())
    """
)


def test_two_processes_fill_one_cache(tmp_path):
    from pathlib import Path

    script = tmp_path / "fill.py"
    script.write_text(FILLER.format(tests=str(Path(__file__).parent)))
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 1], "exactly one process computes, the other reads its file"
    assert sorted(int(o[1]) for o in outs) == [0, 40]
    assert outs[0][2] == outs[1][2]
    assert len(list(cache.glob("*.emb"))) == 1


@pytest.mark.parametrize("kind", ["torch-fused", "onnx"])
def test_fast_engines_match_eager_torch(kind):
    net = Net()
    x = np.random.default_rng(0).standard_normal((4, *SIZE)).astype(np.float32)
    engine = build_engine(kind, net, x)
    y = np.random.default_rng(1).standard_normal((3, *SIZE)).astype(np.float32)  # another batch size
    with torch.no_grad():
        ref = net(torch.from_numpy(y)).numpy()
    assert np.max(np.abs(engine(y) - ref)) <= PARITY_ATOL


def test_auto_picks_a_working_engine_and_rejects_a_bad_one():
    net = Net()
    x = np.random.default_rng(0).standard_normal((4, *SIZE)).astype(np.float32)
    kind, engine, timings = pick_engine(net, x)
    assert set(timings) == {"torch", "torch-fused", "onnx"} and isinstance(timings[kind], float)

    class Flaky(Net):  # different output on every call: no engine can match it
        def forward(self, x):
            return super().forward(x) + torch.rand(1)

    with pytest.raises(EngineError, match="differs"):
        build_engine("torch-fused", Flaky(), x)


def test_forced_engine_is_used_and_in_the_key(tmp_path):
    net, ds = Net(), data()
    fx = extractor(tmp_path, engine="onnx")
    out = fx.embed(net, ds, [0, 1, 2])
    assert set(fx.engines_used.values()) == {"onnx"}
    np.testing.assert_allclose(out.numpy(), eager(net, ds, [0, 1, 2]), rtol=0, atol=PARITY_ATOL)
    extractor(tmp_path, engine="torch").embed(net, ds, [0])
    assert len(list(tmp_path.glob("*.emb"))) == 2


@pytest.mark.parametrize("learner,args", [("simplecil", {}), ("ranpac", {"M": 256})])
def test_cached_run_gives_the_accuracy_of_an_uncached_one(tmp_path, monkeypatch, learner, args):
    """Through the experiment: the cache (cold, then warm) changes no accuracy figure; training rows keep
    the loader's order (RanPAC's validation split depends on it)."""
    from edgecl.experiment import RunConfig, run_experiment

    def run(cache):
        cfg = RunConfig(dataset="shapes:20", learner=learner, learner_args=args, engine="torch", embedding_cache=cache)
        return run_experiment(cfg, log=lambda s: None)

    monkeypatch.setattr("edgecl.experiment.default_cache_dir", lambda: tmp_path)
    plain, cold, warm = run(False), run(True), run(True)
    assert cold.learner.features.store.misses == 2 and warm.learner.features.store.hits == 2
    assert plain.metrics.overall == cold.metrics.overall == warm.metrics.overall
