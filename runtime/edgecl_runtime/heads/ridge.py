"""Ridge-regression head: ``scores = phi(e) W`` with ``W = (G + lam I)^-1 Q`` (RanPAC, SLCA).

``phi`` is RanPAC's fixed random projection with a ReLU, ``phi(e) = relu(e W_rand)``
(``W_rand``: ``(D, M)``), or the identity when the head has no ``W_rand`` (SLCA's
closed-form classifier alignment on the raw ``D``-dim features, ``M = D``).

The head keeps the sufficient statistics of a least-squares classifier with
one-hot targets: the Gram matrix ``G = sum phi phi^T`` (``M x M``), the class
sums ``Q = sum phi y^T`` (``M x C``, column ``c`` is the sum of ``phi`` over
class ``c``'s examples) and the example counts. Both are additive, so adding
``k`` examples of a class is ``G += H^T H``, ``Q[:, c] += H^T 1``, and the
result equals a from-scratch ridge solve on every example seen so far.

Re-solving from scratch costs O(M^3). The head
therefore also keeps ``A_inv = (G + lam I)^-1`` and updates it with the
Woodbury identity,
``(A + s H^T H)^-1 = A^-1 - A^-1 H^T (s I + H A^-1 H^T)^-1 H A^-1`` (``s = +1`` to
add, ``-1`` to remove examples), which costs O(M^2 k) for ``k`` examples; the weights follow in O(M k C) from
``W' = W + A'^-1 dQ - U S^-1 (H W)`` terms (see ``_updated``) instead of an
O(M^2 C) product.
Repeated Woodbury updates accumulate rounding error, so every new head checks
its inverse against ``G + lam I`` on a fixed probe vector (O(M^2)) and
re-factorises from ``G`` when the residual exceeds ``INVERSE_TOL`` (also when
``k`` is so large that a fresh inverse is cheaper); the weights ``W`` are
likewise checked against ``A W = Q`` on a probe combination of classes and
recomputed as ``A_inv Q`` when they drift. All statistics are float64.

Updates do not copy the ``M x M`` matrices (32 MiB each at M = 2048): a head
shares its parent's ``G`` and ``A_inv`` and keeps the updates since as low-rank
terms, ``G = G0 + sum s_j H_j^T H_j`` and ``A_inv = A0 - sum U_j S_j^-1 U_j^T``
(the Woodbury steps telescope), applied in O(M r) per vector for a total rank
``r``. ``G`` and ``A_inv`` are formed (O(M^2 r), cached) only when read (the
head file, tests) or when ``r`` exceeds ``MAX_PENDING_RANK``; an update thus
costs O(M^2 k) reads of ``A0`` and ``G0`` and O(M (k C + r k)) more.

``without_class`` drops the class's column of ``Q`` and its count; its
examples' contribution to ``G`` stays (they were never stored). The result
equals a from-scratch ridge solve in which that class's examples are kept as
background examples with an all-zero target, i.e. they still shape the
decorrelation but vote for no class. To take them out of ``G`` as well, call
``without_examples`` with them before removing the class.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError
from .base import ClassAccumulator, Head, check_examples, register_head
from .validate import float_array, int_array, scalar

INVERSE_TOL = 1e-7  # relative residual |(G + lam I) A_inv v - v| / |v| above which A_inv is recomputed
MAX_PENDING_RANK = 256  # low-rank update terms a head keeps before forming G and A_inv (O(M^2 r))


def pack_triu(G: np.ndarray) -> np.ndarray:
    """The upper triangle of symmetric ``G``, row by row: float32 when that holds every value exactly."""
    tri = np.asarray(G, np.float64)[np.triu_indices(G.shape[0])]
    f32 = tri.astype(np.float32)
    return f32 if np.array_equal(f32, tri) else tri


def unpack_triu(tri: np.ndarray) -> np.ndarray:
    """The symmetric float64 matrix whose upper triangle ``pack_triu`` gave."""
    m = int((np.sqrt(8 * tri.shape[0] + 1) - 1) // 2)
    G = np.zeros((m, m))
    G[np.triu_indices(m)] = tri
    return G + np.triu(G, 1).T


def ridge_inverse(G: np.ndarray, lam: float) -> np.ndarray:
    """``(G + lam I)^-1`` in float64 (symmetrised)."""
    A = np.array(G, dtype=np.float64, copy=True)
    A[np.diag_indices_from(A)] += lam
    P = np.linalg.inv(A)
    return (P + P.T) * 0.5


def random_features(embeddings: np.ndarray, W_rand: np.ndarray | None) -> np.ndarray:
    """``phi(e)``: ``relu(e W_rand)`` in float32, or ``e`` itself without a projection."""
    e = np.asarray(embeddings, dtype=np.float32)
    return e if W_rand is None else np.maximum(e @ W_rand, 0.0)


@functools.lru_cache(maxsize=8)
def _probe(m: int) -> np.ndarray:
    v = np.random.default_rng(12345).standard_normal(m)
    v /= np.linalg.norm(v)
    v.flags.writeable = False
    return v


@functools.lru_cache(maxsize=8)
def _class_probe(c: int) -> np.ndarray:
    r = np.random.default_rng(54321).standard_normal(c)
    r.flags.writeable = False
    return r


class _Operator:
    """An ``M x M`` matrix known by its product (``@``, ``shape``): ``G`` or ``A_inv`` of a head, not formed."""

    def __init__(self, product, m: int):
        self._product, self.shape = product, (m, m)

    def __matmul__(self, X: np.ndarray) -> np.ndarray:
        return self._product(X)


def inverse_residual(G: np.ndarray, lam: float, A_inv: np.ndarray) -> float:
    """Relative residual of ``A_inv`` as the inverse of ``G + lam I`` on a fixed probe vector."""
    v = _probe(G.shape[0])
    x = A_inv @ v
    return float(np.linalg.norm(G @ x + lam * x - v))


def weights_residual(G: np.ndarray, lam: float, Q: np.ndarray, W: np.ndarray) -> float:
    """Relative residual of ``W`` as the solution of ``(G + lam I) W = Q`` on a fixed probe mix of classes."""
    if Q.shape[1] == 0:
        return 0.0
    r = _class_probe(Q.shape[1])
    x, q = W @ r, Q @ r
    return float(np.linalg.norm(G @ x + lam * x - q) / max(np.linalg.norm(q), 1e-300))


@register_head
class RidgeHead(Head):
    """Ridge classifier on (optionally randomly projected) embeddings; see the module doc."""

    kind = "ridge"
    UNKNOWN_SCORE = "nearest_cosine"  # docs/unknown.md
    SHARED_STATISTICS = True  # G holds every class's examples

    def __init__(
        self,
        G: np.ndarray,
        Q: np.ndarray,
        lam: float,
        counts: np.ndarray,
        W_rand: np.ndarray | None = None,
        A_inv: np.ndarray | None = None,
        W: np.ndarray | None = None,
    ):
        G = np.asarray(G, dtype=np.float64)
        self.Q = np.asarray(Q, dtype=np.float64)
        self.lam = float(lam)
        self._counts = np.asarray(counts, dtype=np.int64)
        self.W_rand = None if W_rand is None else np.asarray(W_rand, dtype=np.float32)
        self._stored = (pack_triu(G), ())  # what the head file holds: G's upper triangle, rows since
        self._lazy = None
        if A_inv is None or inverse_residual(G, self.lam, A_inv) > INVERSE_TOL:
            A_inv, W = ridge_inverse(G, self.lam), None
        A_inv = np.asarray(A_inv, dtype=np.float64)
        self._set_base(G, A_inv)
        if W is None or W.shape != self.Q.shape or weights_residual(G, self.lam, self.Q, W) > INVERSE_TOL:
            W = A_inv @ self.Q
        self._set_weights(W)

    def _set_base(self, G: np.ndarray, A_inv: np.ndarray) -> None:
        """``G`` and ``A_inv`` formed, with no pending low-rank terms."""
        self._G0, self._A0, self._A0v, self._pending = G, A_inv, A_inv @ _probe(G.shape[0]), ()
        self._G, self._A = G, A_inv

    def _set_weights(self, W: np.ndarray) -> None:
        self.W = np.asarray(W, dtype=np.float64)  # (M, C) ridge solution
        self.weights = self.W.astype(np.float32)  # what scores use

    @classmethod
    def stored(cls, G_triu: np.ndarray, rows: tuple, Q: np.ndarray, lam: float, counts: np.ndarray,
               weights: np.ndarray, W_rand: np.ndarray | None = None) -> "RidgeHead":
        """A head as its file stores it; ``G`` and ``A_inv`` (O(M^3)) are formed at the first update.

        ``G = unpack(G_triu) + sum sign H^T H`` over ``rows`` (``(H, sign)`` pairs), in float64.
        Scoring needs only ``weights``, so a device that never learns never forms them.
        """
        new = object.__new__(cls)
        new.Q, new.lam, new._counts = np.asarray(Q, np.float64), float(lam), np.asarray(counts, np.int64)
        new.W_rand = None if W_rand is None else np.asarray(W_rand, np.float32)
        new._stored, new._lazy = (G_triu, tuple(rows)), True
        new.weights = np.asarray(weights, np.float32)
        return new

    def __getattr__(self, name: str):
        # Formed on first use by a head made with ``stored``: the float64 G, its inverse and the weights.
        if name in ("_G0", "_A0", "_A0v", "_pending", "_G", "_A", "W") and self.__dict__.get("_lazy"):
            self._lazy = None
            G = unpack_triu(self._stored[0])
            for H, sign in self._stored[1]:
                G += float(sign) * (H.T.astype(np.float64) @ H.astype(np.float64))
            self._set_base(G, ridge_inverse(G, self.lam))
            self.W = self._A0 @ self.Q  # float64; ``weights`` (scoring) stay as stored until an update
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _derived(self, Q, counts, W, pending: tuple | None = None, rows: tuple = ()) -> "RidgeHead":
        """A head sharing this one's ``G0``/``A0`` (never copied), with ``pending`` low-rank terms;
        ``rows``: the examples the update added (``(H, sign)``), kept for the head file."""
        new = object.__new__(type(self))
        new.Q, new.lam, new._counts, new.W_rand = Q, self.lam, counts, self.W_rand
        new._stored, new._lazy = (self._stored[0], self._stored[1] + rows), None
        new._G0, new._A0, new._A0v = self._G0, self._A0, self._A0v
        new._pending = self._pending if pending is None else pending
        new._G, new._A = (self._G, self._A) if pending is None else (None, None)
        new._set_weights(W)
        return new

    # ------------------------------------------------------ G and A_inv
    @property
    def G(self) -> np.ndarray:
        """The Gram matrix ``(M, M)`` (formed from the pending updates on first use)."""
        if self._G is None:
            if self._pending:
                H = np.vstack([h for h, _, _, _ in self._pending])
                s = np.concatenate([np.full(h.shape[0], float(sign)) for h, sign, _, _ in self._pending])
                self._G = self._G0 + (H.T * s) @ H
            else:
                self._G = self._G0
        return self._G

    @property
    def A_inv(self) -> np.ndarray:
        """``(G + lam I)^-1`` ``(M, M)`` (formed from the pending Woodbury terms on first use)."""
        if self._A is None:
            if self._pending:
                U = np.hstack([u for _, _, u, _ in self._pending])
                V = np.hstack([u @ s_inv for _, _, u, s_inv in self._pending])
                self._A = self._A0 - V @ U.T
                self._A = (self._A + self._A.T) * 0.5
            else:
                self._A = self._A0
        return self._A

    def _inv_times(self, X: np.ndarray) -> np.ndarray:
        """``A_inv @ X`` without forming ``A_inv``."""
        if self._A is not None:
            return self._A @ X
        out = self._A0v.copy() if X is _probe(self._A0.shape[0]) else self._A0 @ X
        for _, _, U, S_inv in self._pending:
            out -= U @ (S_inv @ (U.T @ X))
        return out

    def _gram_times(self, X: np.ndarray) -> np.ndarray:
        """``G @ X`` without forming ``G``."""
        if self._G is not None:
            return self._G @ X
        out = self._G0 @ X
        for H, sign, _, _ in self._pending:
            out += sign * (H.T @ (H @ X))
        return out

    def _drift(self) -> tuple[float, float]:
        """``inverse_residual`` and ``weights_residual`` of the head, in O(M^2 + M r), forming nothing."""
        m = self._G0.shape[0]
        G, A = _Operator(self._gram_times, m), _Operator(self._inv_times, m)  # matrix-vector products: O(M^2)
        return inverse_residual(G, self.lam, A), weights_residual(G, self.lam, self.Q, self.W)

    # ------------------------------------------------------------------ file
    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "RidgeHead":
        W_rand = None
        if "W_rand" in arrays:
            W_rand = float_array(arrays, "W_rand", cls.kind, (dim, None), np.float32)
        m = dim if W_rand is None else W_rand.shape[1]
        if "G" not in arrays:  # the layout since format 3 (and every head file this runtime writes)
            return cls._from_stored(arrays, n_classes, m, W_rand)
        G = float_array(arrays, "G", cls.kind, (m, m))
        rows = np.random.default_rng(0).integers(0, m, size=min(m, 8))  # spot check, O(M)
        if not np.allclose(G[rows], G[:, rows].T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(G[rows]).max(initial=0.0)))):
            raise CorruptBundleError("ridge head array 'G' is not symmetric")
        Q = float_array(arrays, "Q", cls.kind, (m, n_classes))
        lam = scalar(arrays, "lam", cls.kind, positive=True)
        counts = int_array(arrays, "counts", cls.kind, (n_classes,), minimum=1)
        A_inv = float_array(arrays, "A_inv", cls.kind, (m, m)) if "A_inv" in arrays else None
        W = float_array(arrays, "W", cls.kind, (m, n_classes)) if "W" in arrays else None
        return cls(G, Q, lam, counts, W_rand, A_inv, W)

    @classmethod
    def _from_stored(cls, arrays: dict[str, np.ndarray], n_classes: int, m: int, W_rand) -> "RidgeHead":
        G_triu = float_array(arrays, "G_triu", cls.kind, (m * (m + 1) // 2,), None)  # float32 or float64, kept
        rows: tuple = ()
        if "H" in arrays:
            H = float_array(arrays, "H", cls.kind, (None, m), np.float32)
            sign = int_array(arrays, "H_sign", cls.kind, (H.shape[0],))
            if not np.all(np.abs(sign) == 1):
                raise CorruptBundleError("ridge head array 'H_sign' must hold +1 or -1")
            rows = tuple((H[i : i + 1], int(sign[i])) for i in range(H.shape[0]))
        Q = float_array(arrays, "Q", cls.kind, (m, n_classes))
        lam = scalar(arrays, "lam", cls.kind, positive=True)
        counts = int_array(arrays, "counts", cls.kind, (n_classes,), minimum=1)
        weights = float_array(arrays, "weights", cls.kind, (m, n_classes), np.float32)
        return cls.stored(G_triu, rows, Q, lam, counts, weights, W_rand)

    def arrays(self) -> dict[str, np.ndarray]:
        """``G`` once (its upper triangle: float32 when that holds it exactly, else float64), the examples
        added since as rows, ``Q``, ``lam``, ``counts`` and the float32 ``weights`` scoring uses."""
        tri, rows = self._stored
        m = self.Q.shape[0]
        if sum(h.shape[0] for h, _ in rows) * m * 4 + tri.nbytes > tri.shape[0] * 8:  # rows cost more than G
            # in float64: fold them in
            G = self.G
            tri, rows = pack_triu(G), ()
            self._stored = (tri, rows)
        out = {"G_triu": tri, "Q": self.Q, "lam": np.float64(self.lam), "counts": self._counts, "weights": self.weights}
        if rows:
            out["H"] = np.vstack([h for h, _ in rows]).astype(np.float32)
            out["H_sign"] = np.concatenate([np.full(h.shape[0], s, np.int8) for h, s in rows])
        if self.W_rand is not None:
            out["W_rand"] = self.W_rand
        return out

    # ------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return int(self.Q.shape[1])

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def dim(self) -> int:
        """Embedding dimension ``D`` the head takes."""
        return int(self.Q.shape[0] if self.W_rand is None else self.W_rand.shape[0])

    # ------------------------------------------------------------- inference
    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """``phi(e)``: ``relu(e W_rand)`` (float32), or ``e`` itself without a projection."""
        return random_features(embeddings, self.W_rand)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.features(embeddings) @ self.weights

    def mean_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``phi(e)`` and each class's mean ``phi`` (``Q``'s column over its count), which the weights are fitted from."""
        return self.features(embeddings).astype(np.float64), (self.Q / self._counts[None, :]).T

    def graph_inputs(self) -> dict[str, np.ndarray]:
        if self.W_rand is not None:
            raise InvalidInputError("a ridge head with a random projection has no single-file scoring (the projection belongs in the graph)")
        return {"weights": self.weights}  # (M, C)

    # --------------------------------------------------------------- updates
    def _check_index(self, index: int) -> int:
        if not 0 <= int(index) < self.num_classes:
            raise InvalidInputError(f"class index {index} out of range for {self.num_classes} classes")
        return int(index)

    def _updated(self, index: int | None, embeddings: np.ndarray, sign: int, allow_empty: bool = False) -> "RidgeHead":
        H = self.features(check_examples(embeddings, self.dim)).astype(np.float64)
        k = H.shape[0]
        Q, W, counts = self.Q, self.W, self._counts.copy()
        total = H.sum(axis=0)
        if index is None:
            Q, W, counts = np.column_stack([Q, total]), np.column_stack([W, np.zeros(len(total))]), np.append(counts, k)
            index = Q.shape[1] - 1
        else:
            index = self._check_index(index)
            if counts[index] + sign * k < (0 if allow_empty else 1):
                raise InvalidInputError(f"cannot remove {k} examples from a class that has {counts[index]}")
            Q = Q.copy()
            Q[:, index] += sign * total
            counts[index] += sign * k
        # Woodbury costs ~4 M^2 k flops, a fresh inverse ~2 M^3: refactorise when that is cheaper.
        rows = ((H.astype(np.float32), sign),)  # H holds float32 features: exact in float32
        if 2 * k >= H.shape[1]:
            new = RidgeHead(self.G + (H.T * float(sign)) @ H, Q, self.lam, counts, self.W_rand)
            new._stored = (self._stored[0], self._stored[1] + rows)
            return new
        U = self._inv_times(H.T)  # (M, k) = A^-1 H^T
        try:
            S_inv = np.linalg.inv(sign * np.eye(k) + H @ U)
        except np.linalg.LinAlgError:
            raise InvalidInputError("removing these examples would leave a singular ridge system") from None
        # W' = A'^-1 (Q + dQ) with dQ = sign H^T 1 e_c^T and A'^-1 = A^-1 - U S^-1 U^T (U^T = H A^-1):
        # W' = W - U S^-1 H W + (A'^-1 dQ), and A'^-1 dQ = sign (U 1 - U S^-1 (H U) 1) e_c^T.  O(M k C).
        W = W - U @ (S_inv @ (H @ W))
        u1 = U.sum(axis=1) - U @ (S_inv @ (H @ U).sum(axis=1))
        W[:, index] += sign * u1
        if self._pending and self._G is not None and self._A is not None:
            self._set_base(self._G, self._A)  # formed since (e.g. written to a head file): start the terms from there
        new = self._derived(Q, counts, W, self._pending + ((H, sign, U, S_inv),), rows)
        inv_res, w_res = new._drift()
        if inv_res > INVERSE_TOL or sum(u.shape[1] for _, _, u, _ in new._pending) > MAX_PENDING_RANK:
            G = new.G
            A = new.A_inv if inv_res <= INVERSE_TOL else ridge_inverse(G, self.lam)
            new._set_base(G, A)
            if inv_res > INVERSE_TOL:
                w_res = weights_residual(G, self.lam, Q, W)
        if w_res > INVERSE_TOL:
            new._set_weights(new._inv_times(Q))
        return new

    def class_statistics(self, index: int) -> dict[str, np.ndarray]:
        return {"feature_sum": self.Q[:, index]}  # its examples in G are shared with every class

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "RidgeHead":
        return self._updated(index, embeddings, +1)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "RidgeHead":
        return self._updated(index, embeddings, -1)

    def without_class(self, index: int, examples: np.ndarray | None = None) -> "RidgeHead":
        """The head without class ``index``; ``examples`` (its known examples) also leave ``G`` first."""
        if examples is not None:
            return self._updated(index, examples, -1, allow_empty=True).without_class(index)
        keep = np.arange(self.num_classes) != self._check_index(index)
        return self._derived(self.Q[:, keep], self._counts[keep], self.W[:, keep])

    def accumulator(self) -> "RidgeAccumulator":
        return RidgeAccumulator(self)


class RidgeAccumulator(ClassAccumulator):
    """The additions' Gram matrix ``dG = sum H^T H``, and per class its count and column of ``Q`` (summed as
    ``with_examples`` does); ``result`` solves the ridge system once from ``G + dG`` (O(M^3 + M^2 C)) instead
    of one Woodbury step per addition."""

    def __init__(self, head: RidgeHead):
        super().__init__(head)
        m = head.Q.shape[0]
        self._dG = np.zeros((m, m))

    def _features(self, embeddings: np.ndarray) -> np.ndarray:
        H = self._head.features(embeddings).astype(np.float64)
        self._dG += H.T @ H
        return H

    def start(self, index: int) -> tuple:
        return int(self._head.counts[index]), self._head.Q[:, index]

    def first(self, embeddings: np.ndarray) -> tuple:
        H = self._features(embeddings)
        return H.shape[0], H.sum(axis=0)

    def step(self, state: tuple, embeddings: np.ndarray) -> tuple:
        H = self._features(embeddings)
        return state[0] + H.shape[0], state[1] + H.sum(axis=0)

    def merged(self) -> RidgeHead:
        head, c0 = self._head, self._head.num_classes
        Q = np.empty((head.Q.shape[0], self.num_classes))
        Q[:, :c0] = head.Q
        counts = np.empty(self.num_classes, np.int64)
        counts[:c0] = head.counts
        for index, (n, column) in self.per_class.items():
            counts[index], Q[:, index] = n, column
        return RidgeHead(head.G + self._dG, Q, head.lam, counts, head.W_rand)
