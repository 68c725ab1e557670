"""PROOF head: visual prototypes and class-name text features scored through projections and a fusion module.

The features are unit CLIP image embeddings ``f``. Each class has a visual prototype (the running mean of
its images' features, ``prototypes``/``counts``) and a text feature (its name through the CLIP text tower,
``texts``); a class added on the device from images alone has no name embedding, and its text feature is
then its normalised visual prototype (``text_from_image`` = 1). With ``P_img``/``P_txt`` the sums of the
per-task projections (two-layer ReLU MLPs) and ``n`` the L2 normalisation:

    fi = n(P_img(f)),  ti = n(P_txt(t_c)),  pi = n(P_img(p_c))
    [a_img, a_txt, a_pro, _] = LN(W_o attn(S) + b_o + S),  S = [fi; t_1..t_C; p_1..p_C; context prompts]
    score_c = fi . ti  +  a_img . a_txt_c  +  a_img . a_pro_c

``attn`` is one-head scaled dot-product self-attention over the sequence ``S`` of each image (the fusion
module, ``Q = S W_q``, ``K = S W_k``, ``V = S W_v``; the tokens all images share are attended once, ``share``,
``fused_scores``) and ``LN`` a layer norm. Only the prototypes, counts and texts grow with the classes; the
projections, the fusion module and the context prompts are fixed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ..errors import CorruptBundleError
from .base import RunningMeanHead, l2_normalize, read_only, register_head, require_arrays, shifted_mean

PROJECTIONS = ("img_w1", "img_b1", "img_w2", "img_b2", "txt_w1", "txt_b1", "txt_w2", "txt_b2")
FUSION = ("attn_q", "attn_k", "attn_v", "attn_o_w", "attn_o_b", "ln_g", "ln_b", "context")
LN_EPS = 1e-5
CHUNK = 32  # images scored at once


def project(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """``sum_t relu(x w1[t] + b1[t]) w2[t] + b2[t]`` for ``(T, D, H)``/``(T, H)``/``(T, H, D)``/``(T, D)`` weights."""
    h = np.maximum(np.einsum("nd,tdh->tnh", x, w1) + b1[:, None], 0)
    return np.einsum("tnh,thd->nd", h, w2) + b2.sum(axis=0)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * g + b


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def centre(z: np.ndarray) -> np.ndarray:
    return z - z.mean(axis=-1, keepdims=True)


def output(p: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The fusion module's output projection."""
    return z @ p["attn_o_w"] + p["attn_o_b"]


class SharedTokens(NamedTuple):
    """What ``fused_scores`` needs of the tokens every image's sequence shares, for the first ``keep`` of them: their
    queries ``q``; the keys ``k`` and values ``v`` of all shared tokens; the log-normaliser ``lse`` of their attention
    within the shared tokens; ``b`` the centred output of that attention, ``r`` the centred output plus token; and the
    row products ``rr = |r|²``, ``rb = r . b``, ``bb = |b|²``."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    lse: np.ndarray
    r: np.ndarray
    b: np.ndarray
    rr: np.ndarray
    rb: np.ndarray
    bb: np.ndarray


def share(p: dict[str, np.ndarray], shared: np.ndarray, keep: int) -> SharedTokens:
    """``SharedTokens`` of the ``shared`` tokens, computed once for any number of images."""
    scale = 1 / np.sqrt(shared.shape[-1])
    q, k, v = shared[:keep] @ p["attn_q"], shared @ p["attn_k"], shared @ p["attn_v"]
    inner = q @ k.T * scale
    top = inner.max(axis=-1)
    lse = top + np.log(np.exp(inner - top[:, None]).sum(axis=-1))
    base = output(p, np.exp(inner - lse[:, None]) @ v)
    r, b = centre(base + shared[:keep]), centre(base)
    return SharedTokens(q, k, v, lse, r, b, (r * r).sum(-1), (r * b).sum(-1), (b * b).sum(-1))


def fused_scores(p: dict[str, np.ndarray], x: np.ndarray, s: SharedTokens) -> np.ndarray:
    """``(N, keep)``: the fusion module's output at the image of each sequence ``[x_n; shared]`` dotted with its
    output at each of the first ``keep`` shared tokens, ``a . LN(y_i)``, with O(keep * D) work per image.

    The sequences differ only in their first token, so a shared token's attention is its attention within
    ``shared`` mixed with the image's value by the weight the softmax gives the image,
    ``w = sigmoid(q.k_x / sqrt(D) - logsumexp_j q.k_j / sqrt(D))``; and the layer norm's dot products expand, so
    no ``(N, keep, D)`` array is formed.

    With ``~`` the centring over the ``D`` features, ``y_i = r_i + w_i (g - b_i)`` (``r_i = b_i + t_i``, ``b_i`` the
    within-shared attention output, ``t_i`` the token, ``g`` the image's output value), so
    ``a . LN(y_i) = (a γ) . ~y_i / σ_i + a . β`` and ``D σ_i² - D ε = |~r_i|² + 2 w_i (~r_i . ~g - ~r_i . ~b_i)
    + w_i² (|~g|² - 2 ~g . ~b_i + |~b_i|²)``: products of ``(N, D)`` and ``(keep, D)`` matrices.
    """
    scale = 1 / np.sqrt(x.shape[-1])
    qx, kx, vx = x @ p["attn_q"], x @ p["attn_k"], x @ p["attn_v"]
    att = softmax(np.concatenate([(qx * kx).sum(-1, keepdims=True), qx @ s.k.T], axis=1) * scale)
    a = layer_norm(output(p, att[:, :1] * vx + att[:, 1:] @ s.v) + x, p["ln_g"], p["ln_b"])
    w = np.exp(-np.logaddexp(0, s.lse - kx @ s.q.T * scale))  # sigmoid(q.k_x / sqrt(D) - lse)
    g, ag = centre(output(p, vx)), a * p["ln_g"]
    gg = (g * g).sum(-1, keepdims=True)
    sq = s.rr + 2 * w * (g @ s.r.T - s.rb) + w**2 * (gg - 2 * g @ s.b.T + s.bb)
    sigma = np.sqrt(np.maximum(sq, 0) / x.shape[-1] + LN_EPS)
    return (ag @ s.r.T + w * ((ag * g).sum(-1, keepdims=True) - ag @ s.b.T)) / sigma + (a @ p["ln_b"])[:, None]


@register_head
class ProofFusionHead(RunningMeanHead):
    kind = "proof_fusion"
    UNKNOWN_SCORE = "nearest_cosine"  # docs/unknown.md

    def __init__(self, prototypes, counts, texts, text_from_image, params: dict[str, np.ndarray]):
        self._protos = np.asarray(prototypes, np.float32)
        self._counts = np.asarray(counts, np.int64)
        self._texts = np.asarray(texts, np.float32)
        self._from_image = np.asarray(text_from_image, np.int64)
        self.params = {k: read_only(np.asarray(params[k], np.float32)) for k in PROJECTIONS + FUSION}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int, dim: int) -> "ProofFusionHead":
        protos, counts, texts, flags = require_arrays(arrays, ("prototypes", "counts", "texts", "text_from_image"), cls.kind)
        params = dict(zip(PROJECTIONS + FUSION, require_arrays(arrays, PROJECTIONS + FUSION, cls.kind)))
        if protos.shape != (n_classes, dim) or texts.shape != (n_classes, dim) or counts.shape != (n_classes,) \
                or flags.shape != (n_classes,):
            raise CorruptBundleError(f"proof_fusion class arrays do not match {n_classes} classes of dimension {dim}")
        w1, w2 = params["img_w1"], params["img_w2"]
        if w1.ndim != 3 or w1.shape[1] != dim or w2.shape[2] != dim or params["context"].shape[-1] != dim \
                or params["attn_q"].shape != (dim, dim):
            raise CorruptBundleError(f"proof_fusion projection/fusion arrays do not fit dimension {dim}")
        if not all(np.all(np.isfinite(a)) for a in (protos, texts, *params.values())) or np.any(counts < 1):
            raise CorruptBundleError("proof_fusion arrays hold non-finite values or non-positive counts")
        return cls(protos, counts, texts, flags, params)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes, "counts": self.counts, "texts": read_only(self._texts),
                "text_from_image": read_only(self._from_image), **self.params}

    @property
    def prototypes(self) -> np.ndarray:
        return read_only(self._protos)

    @property
    def counts(self) -> np.ndarray:
        return read_only(self._counts)

    @property
    def num_classes(self) -> int:
        return int(self._counts.shape[0])

    def effective_texts(self) -> np.ndarray:
        """``(C, D)`` text feature of each class: its name's embedding, or its unit prototype for a class without one."""
        return np.where(self._from_image[:, None] == 1, l2_normalize(self._protos), self._texts).astype(np.float32)

    def graph_inputs(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes, "texts": self.effective_texts()}

    @functools.cached_property
    def _class_tokens(self) -> tuple[dict[str, np.ndarray], np.ndarray, SharedTokens]:
        """The float64 weights, the classes' projected text features and the shared tokens' attention: fixed for this
        head (an update makes a new head), computed when it first scores."""
        p = {k: v.astype(np.float64) for k, v in self.params.items()}
        ti = l2_normalize(project(self.effective_texts().astype(np.float64), p["txt_w1"], p["txt_b1"], p["txt_w2"], p["txt_b2"]))
        pi = l2_normalize(project(self._protos.astype(np.float64), p["img_w1"], p["img_b1"], p["img_w2"], p["img_b2"]))
        return p, ti, share(p, np.concatenate([ti, pi, p["context"]]), 2 * len(ti))

    def terms(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three ``(N, C)`` terms (image-text, fused image-text, fused image-prototype) of ``scores``, ``CHUNK``
        images at a time."""
        p, ti, shared = self._class_tokens
        img, c = (p["img_w1"], p["img_b1"], p["img_w2"], p["img_b2"]), len(ti)
        out = np.zeros((3, len(embeddings), c))
        for i in range(0, len(embeddings), CHUNK):
            fi = l2_normalize(project(l2_normalize(embeddings[i : i + CHUNK].astype(np.float64)), *img))
            fused = fused_scores(p, fi, shared)
            out[:, i : i + CHUNK] = (fi @ ti.T, fused[:, :c], fused[:, c:])
        return out[0], out[1], out[2]

    def mean_space(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The image features and each class's visual prototype."""
        return embeddings.astype(np.float64), self._protos.astype(np.float64)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The sum of the three ``terms``."""
        return sum(self.terms(embeddings)).astype(np.float32)

    def _with(self, protos, counts, texts, flags) -> "ProofFusionHead":
        return ProofFusionHead(protos, counts, texts, flags, self.params)

    def _shifted(self, index: int | None, total: np.ndarray, k: int, sign: int) -> "ProofFusionHead":
        if index is None:  # a class from images alone: its text feature is its own prototype
            proto = (total / k).astype(np.float32)[None]
            return self._with(np.vstack([self._protos, proto]), np.append(self._counts, k),
                              np.vstack([self._texts, np.zeros_like(proto)]), np.append(self._from_image, 1))
        protos, counts = shifted_mean(self._protos, self._counts, index, total, k, sign)
        return self._with(protos, counts, self._texts, self._from_image)

    def without_class(self, index: int) -> "ProofFusionHead":
        keep = np.arange(self.num_classes) != index
        return self._with(self._protos[keep], self._counts[keep], self._texts[keep], self._from_image[keep])
