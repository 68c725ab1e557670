import numpy as np
import pytest

from edgecl.data import ArrayDataset
from edgecl.protocol import ClassIncremental, IncrementalMetrics


def test_b0_inc10_tasks_cover_all_classes_once():
    s = ClassIncremental(100, 0, 10)
    assert s.num_tasks == 10
    flat = [c for t in s.tasks for c in t]
    assert flat == list(range(100))
    assert all(len(t) == 10 for t in s.tasks)


def test_base_then_increments_and_remainder():
    s = ClassIncremental(25, 10, 7)
    assert [len(t) for t in s.tasks] == [10, 7, 7, 1]
    assert ClassIncremental(50, 50, 10).num_tasks == 1


def test_class_order_is_seeded_permutation():
    a, b, c = ClassIncremental(20, 5, 5, seed=1), ClassIncremental(20, 5, 5, seed=1), ClassIncremental(20, 5, 5, seed=2)
    assert a.class_order == b.class_order != c.class_order
    assert sorted(a.class_order) == list(range(20))
    assert ClassIncremental(20, 5, 5, shuffle=False).class_order == list(range(20))


def test_remap_and_task_data():
    images = np.zeros((12, 4, 4, 3), np.uint8)
    labels = np.repeat(np.arange(6), 2)
    ds = ArrayDataset(images, labels, [f"c{i}" for i in range(6)])
    s = ClassIncremental(6, 2, 2, seed=3)
    r = s.remap(ds)
    order = s.class_order
    # label i now means original class order[i], names follow
    assert r.class_names == [f"c{o}" for o in order]
    for i in range(12):
        assert order[r.labels[i]] == labels[i]
    t1 = s.task_data(r, 1)
    assert set(t1.labels.tolist()) == {2, 3} and len(t1) == 4
    assert set(s.seen_data(r, 1).labels.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("args", [(10, -1, 5), (10, 11, 5), (10, 2, 0), (0, 0, 1)])
def test_invalid_scenarios_rejected(args):
    with pytest.raises(ValueError):
        ClassIncremental(*args)


def test_metrics_average_last_forgetting():
    m = IncrementalMetrics()
    tasks = [[0], [1]]
    m.record(np.array([0, 0]), np.array([0, 0]), tasks)  # task 0: 100
    m.record(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), tasks)  # t0 50, t1 100, overall 75
    assert m.overall == [100.0, 75.0]
    assert m.matrix == [[100.0], [50.0, 100.0]]
    assert m.average_incremental == 87.5
    assert m.last == 75.0
    assert m.forgetting == 50.0
