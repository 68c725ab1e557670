"""A learner's exported computation in torch: images -> scores, with no numpy in the forward.

``scoring_module(learner)`` is the torch twin of the bundle's ``model.onnx``: the learner's
``embedding_module()``, the head's fixed transform (RanPAC's ``relu(e W_rand)``, FeCAM's Tukey power)
and the head kind's scoring, its ``graph_inputs()`` held as float32 buffers. ``torch.compile`` traces it
whole (``Learner.logits`` scores with the runtime head's numpy code, which dynamo cannot trace).

The module copies the learner's state when it is built (runtime heads are immutable: learning makes a new
head), so it is built again after the learner learns. ``Learner.scores`` stays the reference: this
module agrees with it to float32 rounding (the bundle's graph does the same computation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgecl_runtime.heads import HEADS

from ..onnx_graph import ExportError

__all__ = ["HeadScores", "ScoringModule", "fixed_transform", "scorer", "scoring_module"]


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _buffer(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))  # a float32 copy: later numpy writes do not reach it


class RandomReLU(nn.Module):
    """RanPAC's fixed random projection ``relu(e W_rand)``."""

    def __init__(self, w_rand: np.ndarray):
        super().__init__()
        self.register_buffer("w", _buffer(w_rand))

    def forward(self, e):
        return torch.relu(e @ self.w)


class Tukey(nn.Module):
    """FeCAM's signed power transform ``sign(e) |e|^beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def forward(self, e):
        return torch.sign(e) * torch.abs(e).pow(self.beta)


# Each head kind's scoring of features ``f`` (N, F) from its ``graph_inputs()`` in order: the bundle's scoring graph
# (``edgecl_export.model_graph`` exports these with the head state as graph inputs) and ``HeadScores`` (as buffers).
class PrototypeScorer(nn.Module):
    def forward(self, f, prototypes):  # prototypes: (C, F), unit rows
        return _l2n(f) @ prototypes.t()


class SubspaceScorer(nn.Module):
    def __init__(self, blocks: int):
        super().__init__()
        self.blocks = blocks

    def forward(self, f, weighted_prototypes):  # (C, F): unit blocks times the class's block weights
        n, d = f.shape[0], f.shape[1]
        return _l2n(f.reshape(n, self.blocks, d // self.blocks)).reshape(n, d) @ weighted_prototypes.t()


class RidgeScorer(nn.Module):
    def forward(self, f, weights):  # (F, C)
        return f @ weights


class LinearScorer(nn.Module):
    def forward(self, f, weight, bias):  # (C, F), (C,)
        return f @ weight.t() + bias


class GaussianScorer(nn.Module):
    def forward(self, f, means, precisions):  # (C, F) unit rows, (C, F, F)
        diff = _l2n(f).unsqueeze(0) - means.unsqueeze(1)  # (C, N, F)
        return -(torch.matmul(diff, precisions) * diff).sum(-1).t()


def scorer(kind: str, head) -> nn.Module:
    """The scoring module of head kind ``kind`` (``forward(f, *head.graph_inputs().values())``)."""
    if kind == "subspace_cosine":
        return SubspaceScorer(head.blocks)
    if kind == "proof_fusion":  # PROOF's projections and fusion module, fixed weights from the head
        from .proof import ProofFusion

        return ProofFusion.from_arrays(head.arrays())
    table = {"prototype_cosine": PrototypeScorer, "ridge": RidgeScorer, "linear": LinearScorer, "gaussian": GaussianScorer}
    if kind not in table:
        raise ExportError(f"no single-file scoring for head kind {kind!r}")
    return table[kind]()


class HeadScores(nn.Module):
    """One head kind's scores of features ``(N, F)``: its ``scorer`` with the head's ``graph_inputs()`` as buffers."""

    def __init__(self, kind: str, head):
        super().__init__()
        self.scorer, self.names = scorer(kind, head), list(head.graph_inputs())
        for name, value in head.graph_inputs().items():
            self.register_buffer(name, _buffer(value))

    def forward(self, f):
        return self.scorer(f, *(getattr(self, name) for name in self.names))


class ScoringModule(nn.Module):
    """Images -> ``(N, C)`` scores: embedding, fixed transform (or none), head scores."""

    def __init__(self, embedding: nn.Module, transform: nn.Module | None, head: HeadScores):
        super().__init__()
        self.embedding, self.transform, self.head = embedding, transform, head

    def forward(self, x):
        f = self.embedding(x).float()
        return self.head(f if self.transform is None else self.transform(f))


def fixed_transform(kind: str, arrays: dict[str, np.ndarray]) -> tuple[nn.Module | None, dict[str, np.ndarray]]:
    """The head's fixed feature transform as a torch module, and the head arrays without it (as the export does)."""
    if kind == "ridge" and "W_rand" in arrays:
        return RandomReLU(arrays["W_rand"]), {k: v for k, v in arrays.items() if k != "W_rand"}
    if kind == "gaussian" and float(arrays["tukey_beta"]) != 1.0:
        return Tukey(float(arrays["tukey_beta"])), {**arrays, "tukey_beta": np.asarray(1.0, arrays["tukey_beta"].dtype)}
    return None, arrays


def _feature_dim(arrays: dict[str, np.ndarray]) -> int:
    """Width of the features the head scores (after the fixed transform), read off its arrays."""
    if "Q" in arrays:  # ridge: (M, C)
        return int(np.shape(arrays["Q"])[0])
    key = next(k for k in ("prototypes", "means", "weight") if k in arrays)
    return int(np.shape(arrays[key])[1])


def scoring_module(learner) -> ScoringModule:
    """``learner``'s exported computation (``export_head()`` and ``embedding_module()``) as one torch module, in
    eval mode; built from the learner's current state."""
    kind, arrays = learner.export_head()
    transform, arrays = fixed_transform(kind, arrays)
    head = HEADS[kind].from_arrays(arrays, int(np.shape(arrays["counts"])[0]), _feature_dim(arrays))
    return ScoringModule(learner.embedding_module(), transform, HeadScores(kind, head)).eval()
