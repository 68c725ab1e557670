"""Random power cuts: a child adding classes is SIGKILLed 200 times at random points.

After every kill the bundle must load, pass every checksum (files and journal
chain), and hold every class whose ``add_class`` call had returned (the child
reports each returned call to a file it fsyncs before the next call).

Children are forked from a "zygote" process that has already imported the
runtime, so 200 trials take seconds rather than 200 interpreter start-ups.
"""

import os
import random
import signal
import subprocess
import sys
import time

from edgecl_runtime import Bundle, store
from tests.conftest import ROOT
from tests.fixtures import copy_fixture

TRIALS = 200
ADDS_PER_CHILD = 4

ZYGOTE = r"""
import os, sys
import numpy as np
from edgecl_runtime import Bundle, store
store.SNAPSHOT_EVERY = 3  # kills land in journal-only updates and in head snapshots
def say(msg):  # one write(2) of < PIPE_BUF bytes: atomic, so a kill never leaves half a line
    os.write(1, (msg + "\n").encode())  # (print() writes twice under PYTHONUNBUFFERED=1)
path, report, adds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for line in sys.stdin:
    trial = int(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            b = Bundle.load(path, verify=False)
            rng = np.random.default_rng(trial)
            b.embed(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))  # warm up onnxruntime (reads only)
            say("ready")
            fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for i in range(adds):
                name = f"t{trial}-{i}" if i % 3 else f"t{max(trial - 1, 0)}-0"  # every 3rd call extends a class
                b.add_class(name, rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
                os.write(fd, (name + "\n").encode())
                os.fsync(fd)
                say("added")
        except BaseException as exc:
            sys.stderr.write(f"child error: {exc!r}\n")
            say("error")  # never leave the test waiting for an "added" line
            code = 3
        os._exit(code)
    say(str(pid))
    sys.stdin.readline()  # reap only once the test has sent its SIGKILL: the pid cannot be reused before
    _, status = os.waitpid(pid, 0)
    say(str(status))
"""


def test_sigkill_at_random_points_never_loses_a_returned_class(tmp_path, record_property):
    d = copy_fixture(tmp_path / "b")
    report = tmp_path / "returned.txt"
    report.touch()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(d), str(report), str(ADDS_PER_CHILD)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    rng = random.Random(0)
    stats = {"killed": 0, "finished": 0, "returned_adds": 0, "head_lagged_journal": 0, "torn_tails": 0}
    t0 = time.monotonic()
    add_seconds = 0.03  # running estimate
    try:
        for trial in range(TRIALS):
            zygote.stdin.write(f"{trial}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            assert zygote.stdout.readline().strip() == "ready", f"trial {trial}: the child did not start"
            # Kill at a random instant of a random add: wait for k returned adds, then a random
            # fraction of the measured duration of one add (robust to a loaded machine).
            t = time.monotonic()
            for _ in range(rng.randrange(ADDS_PER_CHILD)):
                assert zygote.stdout.readline().strip() == "added", f"trial {trial}: the child failed"
                add_seconds = 0.8 * add_seconds + 0.2 * (time.monotonic() - t)
                t = time.monotonic()
            time.sleep(rng.uniform(0.0, 1.3 * add_seconds))
            os.kill(pid, signal.SIGKILL)  # our unreaped child: a zombie if it already finished
            zygote.stdin.write("reap\n")
            zygote.stdin.flush()
            while (line := zygote.stdout.readline().strip()) in ("added", "error"):
                pass
            status = int(line)
            if os.WIFSIGNALED(status):
                stats["killed"] += 1
            else:
                assert os.WEXITSTATUS(status) == 0, f"trial {trial}: the child failed on its own (status {status})"
                stats["finished"] += 1
            # every sha256 and the whole journal chain; the full Bundle (ONNX session) every 10th trial
            st = store.read_state(d, verify=True)
            if trial % 10 == 0:
                assert Bundle.load(d).classes == st.classes
            returned = set(report.read_text().split())
            missing = returned - set(st.classes)
            assert not missing, f"trial {trial}: classes whose add_class returned are lost: {sorted(missing)}"
            stats["head_lagged_journal"] += bool(st.lagging)
            stats["torn_tails"] += st.scan.discarded > 0
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    stats["returned_adds"] = len(report.read_text().split())
    stats["classes"] = len(Bundle.load(d).classes) - 3
    stats["seconds"] = round(time.monotonic() - t0, 1)
    for k, v in stats.items():
        record_property(k, v)
    print(f"\ncrash test: {TRIALS} trials: {stats}")
    assert stats["killed"] >= TRIALS // 2  # most kills land mid-run, not after the child finished
    assert stats["returned_adds"] >= TRIALS // 2  # and many adds completed between kills


MERGE_TRIALS = 80
MERGE_RECORDS = 50

MERGE_ZYGOTE = r"""
import os, sys, time
from edgecl_runtime import store, storage
store.SNAPSHOT_EVERY = 1000  # the merged batch stays after the snapshot point: replay must be all or nothing
def slow(name):  # widen the window between the two halves of the append, so kills land inside it
    if name.startswith("mid-write:journal"):
        time.sleep(0.02)
storage.crash_point = slow
other = sys.argv[1]
for line in sys.stdin:
    path = line.strip()
    pid = os.fork()
    if pid == 0:
        try:
            store.merge(path, other)
        except BaseException as exc:
            sys.stderr.write(f"child error: {exc!r}\n")
            os._exit(3)
        os._exit(0)
    os.write(1, f"{pid}\n".encode())
    sys.stdin.readline()
    _, status = os.waitpid(pid, 0)
    os.write(1, f"{status}\n".encode())
"""


def test_sigkill_during_a_merge_applies_all_of_it_or_nothing(tmp_path, record_property):
    import shutil

    from tests.fixtures import embeddings

    origin = copy_fixture(tmp_path / "origin")
    store.add_examples(origin, "x", embeddings(1))
    other = shutil.copytree(origin, tmp_path / "other")
    for i in range(MERGE_RECORDS):
        store.add_examples(other, f"m{i % 9}", embeddings(10 + i, 2))
    base = store.read_state(origin)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    zygote = subprocess.Popen([sys.executable, "-c", MERGE_ZYGOTE, str(other)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = random.Random(1)
    seen = {"none": 0, "all": 0, "killed": 0, "cut_inside_the_batch": 0}
    try:
        for trial in range(MERGE_TRIALS):
            d = tmp_path / f"a{trial}"
            shutil.copytree(origin, d)
            zygote.stdin.write(f"{d}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.12))
            os.kill(pid, signal.SIGKILL)
            zygote.stdin.write("reap\n")
            zygote.stdin.flush()
            status = int(zygote.stdout.readline())
            seen["killed"] += os.WIFSIGNALED(status)
            st = store.read_state(d, verify=True)
            merged = [r for r in st.scan.records if r.extra.get("merged_from")]
            assert len(merged) in (0, MERGE_RECORDS), f"trial {trial}: {len(merged)} of {MERGE_RECORDS} merged updates applied"
            seen["all" if merged else "none"] += 1
            seen["cut_inside_the_batch"] += "incomplete batch" in st.scan.problem
            if not merged:
                assert st.classes == base.classes
            shutil.rmtree(d)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    for k, v in seen.items():
        record_property(k, v)
    print(f"\nmerge crash test: {MERGE_TRIALS} trials: {seen}")
    assert seen["killed"] >= MERGE_TRIALS // 4 and seen["none"] and seen["all"] and seen["cut_inside_the_batch"]
