"""Gaussian class-statistics head: Mahalanobis distance to each class (FeCAM).

Each class is a Gaussian over Tukey-transformed embeddings
``z = sign(e) |e|^beta`` (``beta = 1``: no transform; FeCAM uses 0.5 on
non-negative CNN features, the sign keeps it defined for ViT features). The
head stores, per class, the count ``n``, the mean ``mu`` (float64) and the
centred scatter ``S = sum (z - mu)(z - mu)^T`` (float32: ``C * D^2`` values, the
dominant size of the head). Statistics are merged and un-merged exactly with
the parallel Welford (Chan et al.) formulas, so ``with_examples`` equals a
from-scratch computation on all examples, ``without_examples`` is its inverse,
and ``without_class`` simply drops the class.

Scoring follows FeCAM (Goswami et al., NeurIPS 2023) and is applied at
predict time, never stored: covariance ``S / (n - 1)``, shrinkage
``cov + a1 * mean(diag) * I + a2 * mean(offdiag) * (1 - I)``, optional
normalisation to a correlation matrix, and
``score = -(x - m)^T cov^-1 (x - m)`` with ``x``, ``m`` the L2-normalised ``z``
and ``mu``. A class with a single example has no covariance and uses the
identity (a Euclidean distance between normalised vectors).

The ``C`` precision matrices are computed lazily on the first ``scores`` call
and cached in the head object; an update copies the cached precision of every
class it did not touch, so a predict never inverts a covariance twice, and an
update inverts nothing. A class with ``n`` examples has a scatter of rank at
most ``n - 1``; when ``n <= D / 4`` (a few-shot class, or FeCAM's 30 images per
class on a 1280-D CNN) its shrunk covariance is a diagonal plus a rank ``n``
term, and its precision is kept in Woodbury form ``diag(a) - B K B^T``
(``B``: ``D x n``, from a pivoted Cholesky factor of the scatter): the same
distance for ``O(D n)`` per query instead of ``O(D^2)``, and ``O(D n)`` memory. The scatters are kept as per-class blocks that updates
share (a new head replaces or appends one block), so an update copies O(C D)
values, not the C D^2 of every scatter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import CorruptBundleError, InvalidInputError
from .base import ClassAccumulator, Head, check_examples, l2_normalize, register_head
from .validate import float_array, int_array, scalar

SCORE_CHUNK = 256  # queries per batched (C, chunk, D) @ (C, D, D) product


def tukey(x: np.ndarray, beta: float) -> np.ndarray:
    """Signed Tukey power transform ``sign(x) |x|^beta`` (identity for ``beta = 1``)."""
    x = np.asarray(x, dtype=np.float64)
    return x if beta == 1.0 else np.sign(x) * np.abs(x) ** beta


def _shrinkage(scatter: np.ndarray, n: int, a1: float, a2: float, normalize: bool) -> tuple | None:
    """FeCAM's shrinkage of one class as ``(G, g, b, sd)``: covariance ``G + b 1 1^T + g I`` (``G = scatter / (n - 1)``,
    ``g = a1 dm - a2 om``, ``b = a2 om``; ``dm``, ``om`` the mean variance and covariance), normalised by ``sd``
    (ones without normalisation); ``None`` when the class has no covariance (one example or zero variance)."""
    d = scatter.shape[0]
    if n < 2:
        return None
    G = scatter.astype(np.float64) / (n - 1)
    trace = float(np.trace(G))
    dm = trace / d
    if not dm > 0:
        return None
    om = (float(G.sum()) - trace) / max(d * (d - 1), 1)
    sd = np.sqrt(np.maximum(np.diag(G) + a1 * dm, dm * 1e-12)) if normalize else np.ones(d)
    return G, a1 * dm - a2 * om, a2 * om, sd


def shrunk_covariance(scatter: np.ndarray, n: int, a1: float, a2: float, normalize: bool) -> np.ndarray:
    """FeCAM's covariance of one class from its scatter: shrinkage, then optional normalisation."""
    terms = _shrinkage(scatter, n, a1, a2, normalize)
    if terms is None:
        return np.eye(scatter.shape[0])
    G, g, b, sd = terms
    cov = G + b
    cov[np.diag_indices(len(sd))] += g
    return cov / np.outer(sd, sd) if normalize else cov


def _precision(cov: np.ndarray) -> np.ndarray:
    try:
        P = np.linalg.inv(cov)
    except np.linalg.LinAlgError:
        P = np.linalg.pinv(cov, hermitian=True)
    return ((P + P.T) * 0.5).astype(np.float32)


class Woodbury(NamedTuple):
    """A class's precision ``diag(inv_a) - B K B^T`` (float64; ``B`` has ``k`` columns, ``K`` is ``k x k``)."""

    inv_a: np.ndarray
    B: np.ndarray
    K: np.ndarray

    def dense(self) -> np.ndarray:
        return (np.diag(self.inv_a) - self.B @ self.K @ self.B.T).astype(np.float32)


def pivoted_cholesky(G: np.ndarray, rank: int, rtol: float = 1e-10) -> np.ndarray:
    """``F`` (``D x r``, ``r <= rank``) with ``F F^T = G`` for a PSD ``G`` of rank ``r`` (diagonal pivoting)."""
    d = np.diag(G).copy()
    F = np.zeros((G.shape[0], rank))
    stop = rtol * max(float(d.max(initial=0.0)), 0.0)
    for j in range(rank):
        p = int(np.argmax(d))
        if not d[p] > stop:
            return F[:, :j]
        F[:, j] = (G[:, p] - F[:, :j] @ F[p, :j]) / np.sqrt(d[p])
        d -= F[:, j] ** 2
    return F


def woodbury_precision(scatter: np.ndarray, n: int, a1: float, a2: float, normalize: bool) -> Woodbury | None:
    """The inverse of ``shrunk_covariance(scatter, n, ...)`` in Woodbury form; ``None`` when it has none.

    With ``G = scatter / (n - 1) = F F^T`` (rank ``< n``) the shrunk covariance is
    ``g I + b 1 1^T + F F^T`` (``g = a1 dm - a2 om``, ``b = a2 om``), normalised
    ``L (.) L`` with ``L = diag(1 / sd)``: ``A + U S U^T`` with ``A = g L^2``,
    ``U = L V``, ``V = [F, sqrt|b| 1]``, ``S`` the signs; Woodbury's identity gives
    ``A^-1 - A^-1 U (S + V^T V / g)^-1 U^T A^-1``.
    """
    d = scatter.shape[0]
    terms = _shrinkage(scatter, n, a1, a2, normalize)
    if terms is None:
        return Woodbury(np.ones(d), np.zeros((d, 0)), np.zeros((0, 0)))  # the identity
    G, g, b, sd = terms
    if not g > 0:
        return None
    F = pivoted_cholesky(G, n - 1)
    V = np.hstack([F, np.full((d, 1), np.sqrt(abs(b)))])
    signs = np.append(np.ones(F.shape[1]), 1.0 if b >= 0 else -1.0)
    M = np.diag(signs) + V.T @ V / g
    if np.linalg.cond(M) > 1e10:
        return None
    return Woodbury(sd**2 / g, sd[:, None] * V / g, np.linalg.inv(M))


def _woodbury_scores(x: np.ndarray, stack: tuple) -> np.ndarray:
    """``-(x - m_c)^T P_c (x - m_c)`` for Woodbury precisions stacked as ``(inv_a (C, D), B (C, D, k), K (C, k, k))``
    with the means' terms ``m_c * inv_a_c`` (C, D), ``m_c^T diag(inv_a_c) m_c`` (C,) and ``B_c^T m_c`` (C, k)."""
    IA, B, K, mIA, mm, mB = stack
    C, D, k = B.shape
    quad = (x * x) @ IA.T - 2.0 * x @ mIA.T + mm
    if k == 0:
        return -quad
    t = (x @ B.transpose(1, 0, 2).reshape(D, C * k)).reshape(-1, C, k) - mB
    t = t.transpose(1, 0, 2)  # (C, n, k)
    quad -= np.sum((t @ K) * t, axis=2).T
    return -quad


def _batch_stats(z: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    mu = z.mean(axis=0)
    c = z - mu
    return z.shape[0], mu, c.T @ c


def chan_merge(a: tuple, b: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, mean, scatter)`` of two disjoint batches from theirs (Chan et al.'s parallel formulas, float64)."""
    (na, mua, Sa), (nb, mub, Sb) = a, b
    n = na + nb
    delta = mub - mua
    return n, mua + delta * (nb / n), Sa + Sb + np.outer(delta, delta) * (na * nb / n)


@register_head
class GaussianHead(Head):
    """Per-class Gaussian statistics scored by (shrunk) Mahalanobis distance; see the module doc."""

    kind = "gaussian"
    # not max_score (the smallest Mahalanobis distance), better on emoji:500 but rejecting most images of a class
    # added on the device from 5 examples (docs/unknown.md)
    UNKNOWN_SCORE = "nearest_cosine"

    def __init__(
        self,
        means: np.ndarray,
        scatter: np.ndarray,
        counts: np.ndarray,
        beta: float = 0.5,
        shrink: tuple[float, float] = (1.0, 1.0),
        normalize_cov: bool = True,
        _precisions: list | None = None,
    ):
        self.means = np.asarray(means, dtype=np.float64)
        # per-class (D, D) float32 blocks: an update replaces or appends one and shares the others
        if isinstance(scatter, np.ndarray):
            scatter = np.asarray(scatter, dtype=np.float32)
            self._blocks, self._scatter = list(scatter), scatter
        else:
            self._blocks, self._scatter = [np.asarray(s, dtype=np.float32) for s in scatter], None
        self._counts = np.asarray(counts, dtype=np.int64)
        self.beta = float(beta)
        self.shrink = (float(shrink[0]), float(shrink[1]))
        self.normalize_cov = bool(normalize_cov)
        self._prec = list(_precisions) if _precisions is not None else [None] * self.num_classes

    @classmethod
    def empty(cls, dim: int, beta: float = 0.5, shrink=(1.0, 1.0), normalize_cov: bool = True) -> "GaussianHead":
        """A head with no classes yet (learners add classes with ``with_examples(None, ...)``)."""
        if not beta > 0 or min(shrink) < 0:
            raise ValueError(f"need beta > 0 and shrinkage >= 0, got beta={beta}, shrink={shrink}")
        return cls(np.zeros((0, dim)), np.zeros((0, dim, dim), np.float32), np.zeros(0, np.int64), beta, shrink,
                   normalize_cov)

    # ------------------------------------------------------------------ file
    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "GaussianHead":
        k = cls.kind
        means = float_array(arrays, "means", k, (n_classes, dim))
        scatter = float_array(arrays, "scatter", k, (n_classes, dim, dim), np.float32)
        counts = int_array(arrays, "counts", k, (n_classes,), minimum=1)
        beta = scalar(arrays, "tukey_beta", k, positive=True)
        shrink = float_array(arrays, "shrink", k, (2,))
        if shrink.min() < 0:
            raise CorruptBundleError("gaussian head array 'shrink' holds negative values")
        normalize = scalar(arrays, "normalize_cov", k)
        if normalize not in (0.0, 1.0):
            raise CorruptBundleError("gaussian head array 'normalize_cov' must be 0 or 1")
        rows = np.random.default_rng(0).integers(0, dim, size=min(dim, 8))  # spot check, O(C D)
        a, b = scatter[:, rows, :], np.swapaxes(scatter[:, :, rows], 1, 2)
        if not np.allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(a).max(initial=0)))):
            raise CorruptBundleError("gaussian head array 'scatter' is not symmetric")
        return cls(means, scatter, counts, beta, tuple(shrink), bool(normalize))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "means": self.means,
            "scatter": self.scatter,
            "counts": self._counts,
            "tukey_beta": np.float64(self.beta),
            "shrink": np.array(self.shrink, np.float64),
            "normalize_cov": np.float64(self.normalize_cov),
        }

    # ------------------------------------------------------------ properties
    @property
    def scatter(self) -> np.ndarray:
        """``(C, D, D)`` float32 class scatters (stacked on first use after an update)."""
        if self._scatter is None:
            self._scatter = np.stack(self._blocks) if self._blocks else np.zeros((0, self.dim, self.dim), np.float32)
        return self._scatter

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def covariance(self, index: int) -> np.ndarray:
        """The shrunk (and normalised) covariance class ``index`` is scored with."""
        return shrunk_covariance(self._blocks[index], int(self._counts[index]), *self.shrink, self.normalize_cov)

    def _class_precision(self, c: int):
        """Class ``c``'s precision: cached, else a ``Woodbury`` for a low-rank scatter, else a dense inverse."""
        p = self._prec[c]
        if p is None:
            n = int(self._counts[c])
            if n <= self.dim // 4:
                p = woodbury_precision(self._blocks[c], n, *self.shrink, self.normalize_cov)
            if p is None:
                p = _precision(self.covariance(c))
            self._prec[c] = p
        return p

    def precisions(self) -> np.ndarray:
        """``(C, D, D)`` float32 inverses of the scoring covariances (computed once, cached).

        The stacked array is the only copy of the dense ones: their per-class entries become views of it.
        """
        stacked = self.__dict__.get("_stacked")
        if stacked is None:
            stacked = np.empty((self.num_classes, self.dim, self.dim), np.float32)
            for c in range(self.num_classes):
                p = self._class_precision(c)
                if isinstance(p, Woodbury):
                    stacked[c] = p.dense()
                else:
                    stacked[c], self._prec[c] = p, stacked[c]
            self._stacked = stacked
        return stacked

    def _scorers(self) -> tuple:
        """Cached ``(low-rank classes, their stacked Woodbury terms, dense classes, their (C', D, D) precisions)``."""
        scorers = self.__dict__.get("_scorer_cache")
        if scorers is None:
            prec = [self._class_precision(c) for c in range(self.num_classes)]
            low = np.array([c for c, p in enumerate(prec) if isinstance(p, Woodbury)], np.int64)
            dense = np.setdiff1d(np.arange(self.num_classes), low)
            k = max([prec[c].B.shape[1] for c in low], default=0)
            B, K = np.zeros((len(low), self.dim, k)), np.zeros((len(low), k, k))
            for i, c in enumerate(low):  # zero-padded to the widest: a zero column adds nothing
                w = prec[c].B.shape[1]
                B[i, :, :w], K[i, :w, :w] = prec[c].B, prec[c].K
            IA = np.array([prec[c].inv_a for c in low]).reshape(len(low), self.dim)
            mu = l2_normalize(self.means[low])
            stack = (IA, B, K, mu * IA, np.sum(mu * mu * IA, axis=1), np.einsum("cd,cdk->ck", mu, B))
            P = self.precisions() if len(dense) == self.num_classes else np.array([prec[c] for c in dense], np.float32)
            scorers = self._scorer_cache = (low, stack, dense, P.reshape(len(dense), self.dim, self.dim))
        return scorers

    # ------------------------------------------------------------- inference
    def graph_inputs(self) -> dict[str, np.ndarray]:
        if self.beta != 1.0:
            raise InvalidInputError("a gaussian head with a Tukey transform has no single-file scoring (the transform belongs in the graph)")
        inputs = self.__dict__.get("_graph")
        if inputs is None:
            inputs = self._graph = {"means": l2_normalize(self.means).astype(np.float32), "precisions": self.precisions()}
        return inputs

    def held_out_scores(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``scores``, each image's own class re-fitted without it: its mean and scatter downdated (Welford), its
        shrunk precision formed again (Woodbury form when the class is low-rank, else dense)."""
        out = self.scores(embeddings).astype(np.float64)
        t = tukey(embeddings, self.beta)
        x = l2_normalize(t)
        for i in np.nonzero((labels >= 0) & (self._counts[np.maximum(labels, 0)] > 2))[0]:
            out[i, labels[i]] = self._without_one(int(labels[i]), t[i], x[i])
        return out

    def _without_one(self, c: int, t: np.ndarray, x: np.ndarray) -> float:
        """Minus the distance of ``x`` (unit, Tukey-transformed ``t``) to class ``c`` fitted without ``t``."""
        n, m = int(self._counts[c]), self.means[c]
        mean = (n * m - t) / (n - 1)
        d = t - m
        scatter = self._blocks[c].astype(np.float64) - np.outer(d, d) * (n / (n - 1))
        diff = x - l2_normalize(mean)
        p = woodbury_precision(scatter, n - 1, *self.shrink, self.normalize_cov) if n - 1 <= self.dim // 4 else None
        if p is not None:
            return float(-(diff * diff) @ p.inv_a + ((diff @ p.B) @ p.K) @ (p.B.T @ diff))
        P = np.linalg.pinv(shrunk_covariance(scatter, n - 1, *self.shrink, self.normalize_cov), hermitian=True)
        return float(-diff @ P @ diff)

    def mean_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Tukey-transformed embeddings and the class means of theirs."""
        return tukey(embeddings, self.beta), self.means

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        x64 = l2_normalize(tukey(embeddings, self.beta))
        x, mu = x64.astype(np.float32), l2_normalize(self.means).astype(np.float32)
        low, stack, dense, P = self._scorers()
        out = np.empty((x.shape[0], self.num_classes), np.float32)
        for i in range(0, x.shape[0], SCORE_CHUNK):
            if len(low):
                out[i : i + SCORE_CHUNK, low] = _woodbury_scores(x64[i : i + SCORE_CHUNK], stack)
            if len(dense):
                diff = x[None, i : i + SCORE_CHUNK] - mu[dense, None]  # (C', n, D)
                out[i : i + SCORE_CHUNK, dense] = -np.einsum("cnd,cnd->nc", diff @ P, diff)
        return out

    # --------------------------------------------------------------- updates
    def _replace(self, means, scatter, counts, precisions) -> "GaussianHead":
        return GaussianHead(means, scatter, counts, self.beta, self.shrink, self.normalize_cov, precisions)

    def _check_index(self, index: int) -> int:
        if not 0 <= int(index) < self.num_classes:
            raise InvalidInputError(f"class index {index} out of range for {self.num_classes} classes")
        return int(index)

    def class_statistics(self, index: int) -> dict[str, np.ndarray]:
        return {"mean": self.means[index], "scatter": self._blocks[index]}

    def with_examples(self, index: int | None, embeddings: np.ndarray) -> "GaussianHead":
        return self.with_moments(index, *_batch_stats(tukey(check_examples(embeddings, self.dim), self.beta)))

    def with_moments(self, index: int | None, nb: int, mub: np.ndarray, Sb: np.ndarray) -> "GaussianHead":
        """New head with a batch of ``nb`` examples added to class ``index`` (``None``: a new last class),
        given by the mean ``mub`` and centred scatter ``Sb`` of their Tukey-transformed embeddings."""
        nb = int(nb)
        if nb < 1 or np.shape(mub) != (self.dim,) or np.shape(Sb) != (self.dim, self.dim):
            raise InvalidInputError(f"moments of {nb} examples do not fit a head of dimension {self.dim}")
        if index is None:
            return self._replace(
                np.vstack([self.means, mub[None]]),
                self._blocks + [Sb.astype(np.float32)],
                np.append(self._counts, nb),
                self._prec + [None],
            )
        c = self._check_index(index)
        means, scatter, counts = self.means.copy(), list(self._blocks), self._counts.copy()
        n, means[c], S = chan_merge((int(self._counts[c]), self.means[c], self._blocks[c]), (nb, mub, Sb))
        scatter[c] = S.astype(np.float32)
        counts[c] = n
        prec = list(self._prec)
        prec[c] = None
        return self._replace(means, scatter, counts, prec)

    def without_examples(self, index: int, embeddings: np.ndarray) -> "GaussianHead":
        nb, mub, Sb = _batch_stats(tukey(check_examples(embeddings, self.dim), self.beta))
        c = self._check_index(index)
        n = int(self._counts[c])
        na = n - nb
        if na < 1:
            raise InvalidInputError(f"cannot remove {nb} examples from a class that has {n}")
        mua = (self.means[c] * n - mub * nb) / na
        delta = mub - mua
        means, scatter, counts = self.means.copy(), list(self._blocks), self._counts.copy()
        means[c] = mua
        scatter[c] = (self._blocks[c] - Sb - np.outer(delta, delta) * (na * nb / n)).astype(np.float32)
        counts[c] = na
        prec = list(self._prec)
        prec[c] = None
        return self._replace(means, scatter, counts, prec)

    def without_class(self, index: int) -> "GaussianHead":
        c = self._check_index(index)
        keep = np.arange(self.num_classes) != c
        return self._replace(self.means[keep], self._blocks[:c] + self._blocks[c + 1 :], self._counts[keep],
                             self._prec[:c] + self._prec[c + 1 :])

    def accumulator(self) -> "GaussianAccumulator":
        return GaussianAccumulator(self)


class GaussianAccumulator(ClassAccumulator):
    """Per class: ``(n, mean, scatter)``, updated with Chan's formulas and a float32 scatter as ``with_examples``."""

    def start(self, index: int) -> tuple:
        return int(self._head.counts[index]), self._head.means[index], self._head._blocks[index]

    def first(self, embeddings: np.ndarray) -> tuple:
        n, mu, S = _batch_stats(tukey(embeddings, self._head.beta))
        return n, mu, S.astype(np.float32)

    def step(self, state: tuple, embeddings: np.ndarray) -> tuple:
        n, mu, S = chan_merge(state, _batch_stats(tukey(embeddings, self._head.beta)))
        return n, mu, S.astype(np.float32)

    def merged(self) -> GaussianHead:
        head, c0 = self._head, self._head.num_classes
        means = np.empty((self.num_classes, head.dim))
        means[:c0] = head.means
        counts = np.empty(self.num_classes, np.int64)
        counts[:c0] = head.counts
        new = [None] * (self.num_classes - c0)
        blocks, prec = list(head._blocks) + new, list(head._prec) + new
        for index, (n, mu, S) in self.per_class.items():
            counts[index], means[index], blocks[index], prec[index] = n, mu, S, None
        return head._replace(means, blocks, counts, prec)
