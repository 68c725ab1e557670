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

Re-solving from scratch costs O(M^3) (about 0.5 s for M = 2048). The head
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

``without_class`` drops the class's column of ``Q`` and its count; its
examples' contribution to ``G`` stays (they were never stored). The result
equals a from-scratch ridge solve in which that class's examples are kept as
background examples with an all-zero target, i.e. they still shape the
decorrelation but vote for no class. To take them out of ``G`` as well, call
``without_examples`` with them before removing the class.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError
from .base import Head, check_examples, register_head
from .validate import float_array, int_array, scalar

INVERSE_TOL = 1e-7  # relative residual |(G + lam I) A_inv v - v| / |v| above which A_inv is recomputed


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


def _probe(m: int) -> np.ndarray:
    v = np.random.default_rng(12345).standard_normal(m)
    return v / np.linalg.norm(v)


def inverse_residual(G: np.ndarray, lam: float, A_inv: np.ndarray) -> float:
    """Relative residual of ``A_inv`` as the inverse of ``G + lam I`` on a fixed probe vector."""
    v = _probe(G.shape[0])
    x = A_inv @ v
    return float(np.linalg.norm(G @ x + lam * x - v))


def weights_residual(G: np.ndarray, lam: float, Q: np.ndarray, W: np.ndarray) -> float:
    """Relative residual of ``W`` as the solution of ``(G + lam I) W = Q`` on a fixed probe mix of classes."""
    if Q.shape[1] == 0:
        return 0.0
    r = np.random.default_rng(54321).standard_normal(Q.shape[1])
    x, q = W @ r, Q @ r
    return float(np.linalg.norm(G @ x + lam * x - q) / max(np.linalg.norm(q), 1e-300))


def woodbury(A_inv: np.ndarray, H: np.ndarray, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A + sign * H^T H)^-1`` from ``A^-1`` for ``k`` rows ``H`` in O(M^2 k); also ``U = A^-1 H^T``, ``S^-1``."""
    U = A_inv @ H.T  # (M, k)
    inner = sign * np.eye(H.shape[0]) + H @ U
    try:
        S_inv = np.linalg.inv(inner)
    except np.linalg.LinAlgError:
        raise InvalidInputError("removing these examples would leave a singular ridge system") from None
    P = (U @ S_inv) @ U.T
    np.subtract(A_inv, P, out=P)
    return P, U, S_inv


@register_head
class RidgeHead(Head):
    """Ridge classifier on (optionally randomly projected) embeddings; see the module doc."""

    kind = "ridge"

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
        self.G = np.asarray(G, dtype=np.float64)
        self.Q = np.asarray(Q, dtype=np.float64)
        self.lam = float(lam)
        self._counts = np.asarray(counts, dtype=np.int64)
        self.W_rand = None if W_rand is None else np.asarray(W_rand, dtype=np.float32)
        if A_inv is None or inverse_residual(self.G, self.lam, A_inv) > INVERSE_TOL:
            A_inv, W = ridge_inverse(self.G, self.lam), None
        self.A_inv = np.asarray(A_inv, dtype=np.float64)
        if W is None or W.shape != self.Q.shape or weights_residual(self.G, self.lam, self.Q, W) > INVERSE_TOL:
            W = self.A_inv @ self.Q
        self.W = np.asarray(W, dtype=np.float64)  # (M, C) ridge solution
        self.weights = self.W.astype(np.float32)  # what scores use

    # ------------------------------------------------------------------ file
    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "RidgeHead":
        W_rand = None
        if "W_rand" in arrays:
            W_rand = float_array(arrays, "W_rand", cls.kind, (dim, None), np.float32)
        m = dim if W_rand is None else W_rand.shape[1]
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

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"G": self.G, "Q": self.Q, "lam": np.float64(self.lam), "counts": self._counts, "A_inv": self.A_inv,
               "W": self.W}
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
        return int(self.G.shape[0] if self.W_rand is None else self.W_rand.shape[0])

    # ------------------------------------------------------------- inference
    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """``phi(e)``: ``relu(e W_rand)`` (float32), or ``e`` itself without a projection."""
        return random_features(embeddings, self.W_rand)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.features(embeddings) @ self.weights

    # --------------------------------------------------------------- updates
    def _check_index(self, index: int) -> int:
        if not 0 <= int(index) < self.num_classes:
            raise InvalidInputError(f"class index {index} out of range for {self.num_classes} classes")
        return int(index)

    def _updated(self, index: int | None, embeddings: np.ndarray, sign: int) -> "RidgeHead":
        H = self.features(check_examples(embeddings, self.dim)).astype(np.float64)
        k = H.shape[0]
        G, Q, W, counts = self.G.copy(), self.Q.copy(), self.W, self._counts.copy()
        G += (H.T * float(sign)) @ H  # O(M^2 k), one M x M temporary
        total = H.sum(axis=0)
        if index is None:
            Q, W, counts = np.column_stack([Q, total]), np.column_stack([W, np.zeros(len(total))]), np.append(counts, k)
            index = Q.shape[1] - 1
        else:
            index = self._check_index(index)
            if counts[index] + sign * k < 1:
                raise InvalidInputError(f"cannot remove {k} examples from a class that has {counts[index]}")
            Q[:, index] += sign * total
            counts[index] += sign * k
        # Woodbury costs ~4 M^2 k flops, a fresh inverse ~2 M^3: refactorise when that is cheaper.
        if 2 * k >= G.shape[0]:
            return RidgeHead(G, Q, self.lam, counts, self.W_rand)
        A_inv, U, S_inv = woodbury(self.A_inv, H, sign)
        # W' = A'^-1 (Q + dQ) with dQ = sign H^T 1 e_c^T and A'^-1 = A^-1 - U S^-1 U^T (U^T = H A^-1):
        # W' = W - U S^-1 H W + (A'^-1 dQ), and A'^-1 dQ = sign (U 1 - U S^-1 (H U) 1) e_c^T.  O(M k C).
        W = W - U @ (S_inv @ (H @ W))
        u1 = U.sum(axis=1) - U @ (S_inv @ (H @ U).sum(axis=1))
        W[:, index] += sign * u1
        return RidgeHead(G, Q, self.lam, counts, self.W_rand, A_inv, W)

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "RidgeHead":
        return self._updated(index, embeddings, +1)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "RidgeHead":
        return self._updated(index, embeddings, -1)

    def without_class(self, index: int) -> "RidgeHead":
        keep = np.arange(self.num_classes) != self._check_index(index)
        return RidgeHead(self.G, self.Q[:, keep], self.lam, self._counts[keep], self.W_rand, self.A_inv, self.W[:, keep])
