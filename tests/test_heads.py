"""Runtime heads of the closed-form learners (ridge: RanPAC/SLCA, gaussian: FeCAM) on random features.

Every update is checked against a from-scratch computation on all examples.
"""

import numpy as np
import pytest

from edgecl_runtime import CorruptBundleError, InvalidInputError
from edgecl_runtime.heads import HEADS
from edgecl_runtime.heads.gaussian import GaussianHead, tukey
from edgecl_runtime.heads.ridge import RidgeHead

D, M, LAM = 24, 96, 3.0


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def examples(rng, k, shift=0.0):
    return (rng.standard_normal((k, D)) + shift).astype(np.float32)


# --------------------------------------------------------------------------- ridge
@pytest.fixture
def W_rand():
    return np.random.default_rng(1).standard_normal((D, M)).astype(np.float32)


def ridge_from_scratch(E, y, C, W_rand, lam=LAM, zero_target=()):
    """W = (G + lam I)^-1 Q solved directly on every example; ``zero_target`` labels vote for no class."""
    H = E.astype(np.float32) if W_rand is None else np.maximum(E.astype(np.float32) @ W_rand, 0)
    H = H.astype(np.float64)
    Y = np.zeros((len(y), C))
    for i, c in enumerate(y):
        if c not in zero_target:
            Y[i, c] = 1.0
    return np.linalg.solve(H.T @ H + lam * np.eye(H.shape[1]), H.T @ Y)


def empty_ridge(W_rand):
    m = D if W_rand is None else W_rand.shape[1]
    return RidgeHead(np.zeros((m, m)), np.zeros((m, 0)), LAM, np.zeros(0, np.int64), W_rand)


@pytest.mark.parametrize("projected", [True, False])
def test_ridge_updates_equal_from_scratch_solve_after_many_updates(W_rand, projected, monkeypatch):
    import edgecl_runtime.heads.ridge as ridge

    fresh, w_resid = [], []
    real, real_w = ridge.ridge_inverse, ridge.weights_residual
    monkeypatch.setattr(ridge, "ridge_inverse", lambda G, lam: fresh.append(1) or real(G, lam))
    monkeypatch.setattr(ridge, "weights_residual", lambda *a: w_resid.append(real_w(*a)) or w_resid[-1])
    W_rand = W_rand if projected else None
    rng = np.random.default_rng(0)
    head, E, y = empty_ridge(W_rand), np.zeros((0, D), np.float32), []
    for step in range(300):  # many Woodbury updates: rank 1..3, new classes now and then, one big batch
        k = 70 if step == 150 else 1 + step % 3
        c = None if step % 40 == 0 else int(rng.integers(head.num_classes))
        e = examples(rng, k, shift=0.3 * (c or head.num_classes))
        head = head.with_examples(c, e)
        E, y = np.vstack([E, e]), y + [head.num_classes - 1 if c is None else c] * k
    # Woodbury did the work: a fresh O(M^3) inverse only for the empty head and the 70-example batch,
    # and the O(M k C) weight updates never drifted enough to be recomputed
    assert len(fresh) == 2
    assert len(w_resid) > 250 and max(w_resid) <= ridge.INVERSE_TOL
    ref = ridge_from_scratch(E, y, head.num_classes, W_rand)
    assert rel(head.A_inv @ head.Q, ref) <= 1e-5
    assert rel(head.weights, ref) <= 1e-5
    np.testing.assert_array_equal(head.counts, np.bincount(y))
    np.testing.assert_allclose(head.scores(E[:5]), head.features(E[:5]) @ ref.astype(np.float32), rtol=1e-4, atol=1e-5)


def test_ridge_remove_examples_is_the_exact_inverse(W_rand):
    rng = np.random.default_rng(2)
    head = empty_ridge(W_rand)
    for c in range(4):
        head = head.with_examples(None, examples(rng, 10, c))
    G0, Q0, W0, P0 = head.G.copy(), head.Q.copy(), head.weights.copy(), head.A_inv.copy()
    extra = examples(rng, 5, 1.0)
    grown = head.with_examples(1, extra)
    assert rel(grown.weights, W0) > 1e-3  # the update did something
    back = grown.without_examples(1, extra)
    assert rel(back.weights, W0) <= 1e-6 and rel(back.A_inv, P0) <= 1e-6
    assert rel(back.G, G0) <= 1e-12 and rel(back.Q, Q0) <= 1e-12
    np.testing.assert_array_equal(back.counts, head.counts)
    # immutability: the original head never changed
    np.testing.assert_array_equal(head.G, G0)
    np.testing.assert_array_equal(head.weights, W0)
    with pytest.raises(InvalidInputError, match="cannot remove"):
        head.without_examples(0, examples(rng, 10))


def test_ridge_without_class_keeps_examples_as_zero_target_background(W_rand):
    rng = np.random.default_rng(3)
    head, E, y = empty_ridge(W_rand), [], []
    for c in range(4):
        e = examples(rng, 8, c)
        head, E, y = head.with_examples(None, e), E + [e], y + [c] * 8
    dropped = head.without_class(1)
    assert dropped.num_classes == 3 and list(dropped.counts) == [8, 8, 8]
    ref = ridge_from_scratch(np.vstack(E), y, 4, W_rand, zero_target=(1,))
    assert rel(dropped.weights, np.delete(ref, 1, axis=1)) <= 1e-5
    np.testing.assert_array_equal(dropped.G, head.G)  # documented: its examples stay in G


def test_ridge_refactorises_a_drifted_inverse(W_rand):
    rng = np.random.default_rng(4)
    head = empty_ridge(W_rand).with_examples(None, examples(rng, 20))
    bad = head.A_inv * (1 + 1e-4)  # as if many updates had drifted
    fixed = RidgeHead(head.G, head.Q, head.lam, head.counts, head.W_rand, bad)
    assert rel(fixed.A_inv, head.A_inv) <= 1e-8


def test_ridge_arrays_round_trip_and_validation(W_rand):
    rng = np.random.default_rng(5)
    head = empty_ridge(W_rand).with_examples(None, examples(rng, 6)).with_examples(None, examples(rng, 6, 1))
    arrays = head.arrays()
    back = HEADS["ridge"].from_arrays(arrays, 2, D)
    for k, v in back.arrays().items():
        np.testing.assert_array_equal(v, arrays[k])
    q = examples(rng, 4)
    np.testing.assert_array_equal(back.scores(q), head.scores(q))
    assert set(arrays) == {"G_triu", "H", "H_sign", "Q", "lam", "counts", "weights", "W_rand"}  # no A_inv, no W
    bad_cases = {
        "G": (lambda a: a.pop("G_triu"), "lacks array 'G_triu'"),
        "Q shape": (lambda a: a.update(Q=a["Q"][:, :1]), "'Q' has shape"),
        "G dtype": (lambda a: a.update(G_triu=a["G_triu"].astype(np.int64)), "'G_triu' has dtype"),
        "G size": (lambda a: a.update(G_triu=a["G_triu"][:-1]), "'G_triu' has shape"),
        "nan": (lambda a: a["weights"].__setitem__((0, 0), np.nan), "'weights' holds non-finite"),
        "lam": (lambda a: a.update(lam=np.float64(-1)), "'lam' must be > 0"),
        "counts": (lambda a: a.update(counts=np.array([3, 0])), "'counts' holds values"),
        "W_rand": (lambda a: a.update(W_rand=a["W_rand"][:-1]), "'W_rand' has shape"),
        "sign": (lambda a: a.update(H=np.ones((1, a["Q"].shape[0]), np.float32), H_sign=np.array([2], np.int8)),
                 "'H_sign' must hold"),
    }
    for name, (mutate, msg) in bad_cases.items():
        a = {k: np.array(v, copy=True) for k, v in arrays.items()}
        mutate(a)
        with pytest.raises(CorruptBundleError, match=msg):
            HEADS["ridge"].from_arrays(a, 2, D)
    with pytest.raises(InvalidInputError, match="dimension"):
        head.with_examples(0, np.zeros((2, D + 1), np.float32))


def test_ridge_head_file_keeps_exactness_through_storage(W_rand):
    """A float32-exact Gram is stored in float32; examples added since are stored as rows, so a head
    read back from its arrays is the same head, and updates from it equal updates of the original."""
    rng = np.random.default_rng(11)
    E = examples(rng, 12)
    H = np.maximum(E @ W_rand, 0).astype(np.float64)
    G = (H.T @ H).astype(np.float32).astype(np.float64)  # as the learners keep it
    head = RidgeHead(G, H.T @ np.eye(2)[np.arange(12) % 2], LAM, np.array([6, 6]), W_rand)
    assert head.arrays()["G_triu"].dtype == np.float32
    grown = head.with_examples(None, examples(rng, 3, 2)).with_examples(0, examples(rng, 2, 3))
    stored = grown.arrays()
    assert stored["G_triu"].dtype == np.float32 and stored["H"].shape == (5, W_rand.shape[1])
    back = HEADS["ridge"].from_arrays(stored, 3, D)
    q = examples(rng, 4)
    np.testing.assert_array_equal(back.scores(q), grown.scores(q))
    more = examples(rng, 3, 4)
    a, b = grown.with_examples(1, more), back.with_examples(1, more)
    assert rel(b.W, a.W) <= 1e-9 and rel(b.G, a.G) <= 1e-15  # the same statistics, summed in another order


# ------------------------------------------------------------------------ gaussian
def gaussian_stats(E, beta=0.5):
    z = tukey(E, beta)
    mu = z.mean(0)
    return z.shape[0], mu, (z - mu).T @ (z - mu)


def fecam_cov(E, a2=1.0, beta=0.5, a1=1.0):
    """FeCAM's shrunk, normalised covariance of a class's examples, written out (np.cov)."""
    cov, d = np.cov(tukey(E, beta).T), E.shape[1]
    dm, off = np.mean(np.diag(cov)), (cov.sum() - np.trace(cov)) / (d * (d - 1))
    cov = cov + a1 * dm * np.eye(d) + a2 * off * (1 - np.eye(d))
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def fecam_scores(E_class, queries, beta=0.5, a1=1.0, a2=1.0):
    """FeCAM's distance written out directly (np.cov, shrink, correlation, inverse)."""
    out = []
    for E in E_class:
        z = tukey(E, beta)
        P = np.linalg.inv(fecam_cov(E, a2, beta, a1))
        x = tukey(queries, beta)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        m = z.mean(0) / np.linalg.norm(z.mean(0))
        out.append(-np.einsum("nd,de,ne->n", x - m, P, x - m))
    return np.stack(out, 1)


def nonneg(rng, k, shift=0.0):
    return np.abs(examples(rng, k, shift))  # CNN-like (post-ReLU) features


def test_gaussian_updates_equal_from_scratch_stats_and_fecam_scores():
    rng = np.random.default_rng(6)
    head = GaussianHead.empty(D)
    data = [nonneg(rng, 12, c) for c in range(3)]
    for e in data:
        head = head.with_examples(None, e)
    more = nonneg(rng, 7, 0)
    head = head.with_examples(0, more[:3]).with_examples(0, more[3:])
    data[0] = np.vstack([data[0], more])
    for c, E in enumerate(data):
        n, mu, S = gaussian_stats(E)
        assert head.counts[c] == n
        assert rel(head.means[c], mu) <= 1e-10 and rel(head.scatter[c], S) <= 1e-5
    q = nonneg(rng, 9, 1)
    np.testing.assert_allclose(head.scores(q), fecam_scores(data, q), rtol=1e-4, atol=1e-4)


def test_gaussian_few_shot_classes_score_exactly_in_woodbury_form():
    rng = np.random.default_rng(10)
    d = 96  # classes of <= d / 4 examples take the low-rank path, larger ones the dense inverse
    data = [np.abs(rng.standard_normal((k, d)) + rng.standard_normal(d)) for k in (2, 10, 24, 40, 12)]
    for a2 in (1.0, 0.0, 3.0):
        head = GaussianHead.empty(d, shrink=(1.0, a2))
        for E in data:
            head = head.with_examples(None, E)
        head = head.with_examples(None, data[0][:1])  # one example: a Euclidean distance
        kinds = [type(head._class_precision(c)).__name__ for c in range(6)]
        assert kinds == ["Woodbury", "Woodbury", "Woodbury", "ndarray", "Woodbury", "Woodbury"]
        q = np.abs(rng.standard_normal((300, d)))  # more than one scoring chunk
        s = head.scores(q)
        np.testing.assert_allclose(s[:, :5], fecam_scores(data, q, a2=a2), rtol=1e-5, atol=1e-5)
        x, m = (tukey(v, 0.5) for v in (q, data[0][:1]))
        x, m = x / np.linalg.norm(x, axis=1, keepdims=True), m / np.linalg.norm(m)
        np.testing.assert_allclose(s[:, 5], -np.sum((x - m) ** 2, axis=1), rtol=1e-5, atol=1e-6)
        dense = head.precisions()  # the single-file graph's inputs: every class dense
        for c, E in enumerate(data):
            assert rel(dense[c], np.linalg.inv(fecam_cov(E, a2))) <= 1e-5


def test_gaussian_remove_examples_inverse_and_without_class():
    rng = np.random.default_rng(7)
    head = GaussianHead.empty(D)
    for c in range(3):
        head = head.with_examples(None, nonneg(rng, 10, c))
    extra = nonneg(rng, 4, 2)
    back = head.with_examples(2, extra).without_examples(2, extra)
    assert rel(back.means, head.means) <= 1e-10 and rel(back.scatter, head.scatter) <= 1e-5
    np.testing.assert_array_equal(back.counts, head.counts)
    q = nonneg(rng, 5, 1)
    np.testing.assert_allclose(back.scores(q), head.scores(q), rtol=1e-4, atol=1e-4)
    dropped = head.without_class(1)
    np.testing.assert_allclose(dropped.scores(q), head.scores(q)[:, [0, 2]], rtol=1e-6)
    with pytest.raises(InvalidInputError, match="cannot remove"):
        head.without_examples(0, nonneg(rng, 10))


def test_gaussian_caches_precisions_and_updates_only_the_touched_class(monkeypatch):
    rng = np.random.default_rng(8)
    head = GaussianHead.empty(D)
    for c in range(4):
        head = head.with_examples(None, nonneg(rng, 10, c))
    calls = []
    real_inv = np.linalg.inv
    monkeypatch.setattr(np.linalg, "inv", lambda a: calls.append(1) or real_inv(a))
    q = nonneg(rng, 3)
    head.scores(q)
    assert len(calls) == 4
    head.scores(q)
    head.scores(q)
    assert len(calls) == 4  # cached: no inversion per predict
    grown = head.with_examples(2, nonneg(rng, 3, 2))
    grown.scores(q)
    assert len(calls) == 5  # only the touched class is re-inverted


def test_gaussian_single_example_class_and_round_trip():
    rng = np.random.default_rng(9)
    head = GaussianHead.empty(D).with_examples(None, nonneg(rng, 10)).with_examples(None, nonneg(rng, 1, 3))
    s = head.scores(nonneg(rng, 4))
    assert s.shape == (4, 2) and np.all(np.isfinite(s))
    arrays = head.arrays()
    back = HEADS["gaussian"].from_arrays(arrays, 2, D)
    for k, v in back.arrays().items():
        np.testing.assert_array_equal(v, arrays[k])
    for name, mutate, msg in [
        ("scatter", lambda a: a.update(scatter=a["scatter"][:, :-1]), "'scatter' has shape"),
        ("means", lambda a: a["means"].__setitem__((0, 0), np.inf), "'means' holds non-finite"),
        ("counts", lambda a: a.update(counts=a["counts"].astype(np.float32)), "'counts' has dtype"),
        ("beta", lambda a: a.pop("tukey_beta"), "lacks array 'tukey_beta'"),
    ]:
        a = {k: np.array(v, copy=True) for k, v in arrays.items()}
        mutate(a)
        with pytest.raises(CorruptBundleError, match=msg):
            HEADS["gaussian"].from_arrays(a, 2, D)


def test_prototype_heads_share_rows_but_stay_immutable():
    from edgecl_runtime.heads.prototype import PrototypeCosineHead

    rng = np.random.default_rng(0)
    head = PrototypeCosineHead(rng.standard_normal((3, D)).astype(np.float32), np.ones(3, np.int64))
    heads = [head]
    for i in range(20):  # appends into a shared, growing buffer
        heads.append(heads[-1].with_examples(None, np.full((2, D), float(i))))
    sibling = heads[10].with_examples(None, np.full((1, D), -1.0))  # branches off an older head
    assert heads[11].prototypes[13, 0] == 10.0 and sibling.prototypes[13, 0] == -1.0
    assert [h.num_classes for h in heads] == list(range(3, 24)) and heads[0].prototypes.shape == (3, D)
    extended = heads[-1].with_examples(0, np.zeros((1, D)))  # extending a class copies; the old head is unchanged
    assert extended.counts[0] == 2 and heads[-1].counts[0] == 1
    with pytest.raises(ValueError):
        heads[-1].prototypes[0, 0] = 1.0  # read-only views
    # scores use the cached normalised rows: equal to normalising the head's own prototypes now
    x = rng.standard_normal((4, D)).astype(np.float32)
    for h in (heads[0], heads[11], sibling, heads[-1], extended):
        p = h.prototypes / np.maximum(np.linalg.norm(h.prototypes, axis=1, keepdims=True), 1e-12)
        np.testing.assert_allclose(h.scores(x), (x / np.linalg.norm(x, axis=1, keepdims=True)) @ p.T, atol=1e-6)


# ------------------------------------------------------------------- subspace cosine (EASE)
def test_subspace_cosine_scores_updates_and_validation():
    from edgecl_runtime.heads.subspace import SubspaceCosineHead

    S, d = 3, D // 3
    rng = np.random.default_rng(0)
    protos, counts = rng.standard_normal((4, D)).astype(np.float32), np.array([2, 3, 1, 5])
    weights = rng.uniform(0.05, 1.0, (4, S)).astype(np.float32)
    new_row = np.array([0.05, 0.05, 1.0], np.float32)
    head = SubspaceCosineHead(protos, counts, weights, new_row)
    x = rng.standard_normal((6, D)).astype(np.float32)

    def reference(h):  # sum over subspaces of the class's weight times the cosine in that subspace
        xs, ps = x.reshape(6, S, d), h.prototypes.reshape(h.num_classes, S, d)
        cos = np.einsum("nsd,csd->ncs", xs, ps) / (
            np.linalg.norm(xs, axis=2)[:, None, :] * np.linalg.norm(ps, axis=2)[None, :, :]
        )
        return (cos * h.weights[None]).sum(axis=2)

    np.testing.assert_allclose(head.scores(x), reference(head), atol=1e-5)
    # A device class: the mean of its examples, with the newest task's weights; the old head is unchanged.
    e = rng.standard_normal((3, D)).astype(np.float32)
    grown = head.with_examples(None, e)
    np.testing.assert_allclose(grown.prototypes[-1], e.mean(0), atol=1e-6)
    assert np.array_equal(grown.weights[-1], new_row) and grown.counts[-1] == 3 and head.num_classes == 4
    np.testing.assert_allclose(grown.scores(x), reference(grown), atol=1e-5)
    # Extending a class is a running mean that keeps its weights; removing the examples is its inverse.
    ext = head.with_examples(1, e)
    np.testing.assert_allclose(ext.prototypes[1], (protos[1] * 3 + e.sum(0)) / 6, atol=1e-5)
    back = ext.without_examples(1, e)
    np.testing.assert_allclose(back.prototypes, protos, atol=1e-5)
    assert np.array_equal(back.counts, counts) and np.array_equal(back.weights, weights)
    gone = grown.without_class(1)
    assert gone.num_classes == 4 and np.array_equal(gone.weights, np.vstack([weights[[0, 2, 3]], new_row[None]]))
    with pytest.raises(InvalidInputError, match="cannot remove"):
        head.without_examples(2, e)  # class 2 has 1 example
    with pytest.raises(InvalidInputError, match="dimension"):
        head.with_examples(None, e[:, :-1])
    # Round trip and validation of the head file.
    arrays = head.arrays()
    again = HEADS["subspace_cosine"].from_arrays(arrays, 4, D)
    np.testing.assert_array_equal(again.scores(x), head.scores(x))
    for mutate, msg in [
        (lambda a: a.pop("weights"), "lacks array 'weights'"),
        (lambda a: a.__setitem__("weights", a["weights"][:, :2]), "'weights' has shape"),
        (lambda a: a.__setitem__("new_class_weights", np.ones(5, np.float32)), "do not divide"),
        (lambda a: a.__setitem__("counts", np.zeros(4, np.int64)), "values < 1"),
        (lambda a: a["prototypes"].__setitem__((0, 0), np.nan), "non-finite"),
    ]:
        a = {k: np.array(v, copy=True) for k, v in arrays.items()}
        mutate(a)
        with pytest.raises(CorruptBundleError, match=msg):
            HEADS["subspace_cosine"].from_arrays(a, 4, D)
