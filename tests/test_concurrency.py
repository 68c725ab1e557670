"""Threads and processes: every prediction's labels come from the one bundle state its scores came from.

Writer processes add and remove classes through the journal while threads of
this process refresh one shared ``Bundle`` and predict with it. Afterwards
every prediction is checked against the state it names (``Prediction.seq``),
rebuilt by replaying the journal: the label must be that state's top class.
"""

import subprocess
import sys
import threading
import time

import numpy as np

from edgecl_runtime import Bundle, store
from tests.conftest import ROOT

WRITER = """
import sys, zlib, numpy as np
from edgecl_runtime import store
path, tag, rounds, probe = sys.argv[1], sys.argv[2], int(sys.argv[3]), np.load(sys.argv[4])
rng = np.random.default_rng(zlib.crc32(tag.encode()))
noise = 0.3 * np.linalg.norm(probe) / np.sqrt(probe.size)  # classes' scores apart by far more than rounding
for i in range(rounds):
    name = f"{tag}-{i}"
    # the probe's own features (plus noise): the class tops the probe while it exists
    store.add_examples(path, name, probe + noise * rng.standard_normal(probe.shape).astype(np.float32))
    if i % 2:
        store.remove_class(path, name)
"""


def state_at(path, seq):
    """``(classes, head)`` after update ``seq``, replayed from the journal's base."""
    st = store.read_state(path, full=True)
    base = st.manifest["base"]
    head, _ = store.read_head(path, st.manifest, "base")
    records = [r for r in st.scan.records if r.seq <= seq]
    return store.replay(head, list(base["classes"]), records, "journal")


def test_predict_labels_come_from_the_state_of_their_scores(exported, tmp_path):
    import shutil

    path = shutil.copytree(exported[1], tmp_path / "bundle")
    b = Bundle.load(path, device="cpu", threads=1)
    probe_img = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    probe = b.embed(probe_img)
    np.save(tmp_path / "probe.npy", probe)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, "12", str(tmp_path / "probe.npy")],
                                cwd=ROOT) for tag in ("w0", "w1")]
    seen, stop, errors = [], threading.Event(), []

    def refresher():
        while not stop.is_set():
            b.refresh()

    def reader():
        try:
            while not stop.is_set():
                p = b.predict(probe_img, top_k=2)
                seen.append((p.seq, p.labels[0], float(p.scores[0])))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=refresher)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for w in writers:
            assert w.wait(timeout=300) == 0
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    final = store.read_state(path)
    assert final.seq == 2 * 12 + 2 * 6  # every add and remove of both writers committed
    seqs = sorted({s for s, _, _ in seen})
    assert len(seqs) >= 5, seqs  # the readers saw the bundle change under them
    for seq in seqs:
        head, classes = state_at(path, seq)
        scores = head.scores(probe)[0]
        want = classes[int(np.argmax(scores))]
        for s, label, score in seen:
            if s == seq:
                assert label == want, (seq, label, want)
                assert abs(score - float(scores.max())) <= 1e-5  # the top two differ by > 3e-4 here


def test_threads_of_one_process_serialise_on_the_lock(exported, tmp_path):
    """Writer threads of one process wait on the bundle's lock like processes do: nothing lost, bundle intact."""
    import shutil

    path = shutil.copytree(exported[1], tmp_path / "bundle")
    dim = store.read_state(path).head.dim
    rng = np.random.default_rng(0)
    rows = {f"thread-{i}": rng.standard_normal((2, dim)).astype(np.float32) for i in range(8)}
    errors = []

    def write(name):
        try:
            store.add_examples(path, name, rows[name])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    b = Bundle.load(path)  # verifies every checksum and replays the journal
    assert set(rows) <= set(b.classes) and b.seq == len(rows)
