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

__all__ = ["ScoringModule", "scoring_module"]


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


class HeadScores(nn.Module):
    """One head kind's scores of features ``(N, F)``, from the head's ``graph_inputs()`` held as buffers."""

    def __init__(self, kind: str, head):
        super().__init__()
        self.kind, self.names = kind, list(head.graph_inputs())
        for name, value in head.graph_inputs().items():
            self.register_buffer(name, _buffer(value))
        self.blocks = int(getattr(head, "blocks", 1))
        self.fusion = None
        if kind == "proof_fusion":  # PROOF's projections and fusion module, fixed weights from the head
            from .proof import ProofFusion

            self.fusion = ProofFusion.from_arrays(head.arrays())

    def forward(self, f):
        args = [getattr(self, name) for name in self.names]
        if self.fusion is not None:
            return self.fusion(f, *args)  # prototypes, texts
        if self.kind == "prototype_cosine":
            return _l2n(f) @ args[0].t()  # (C, F) unit rows
        if self.kind == "subspace_cosine":  # unit blocks times each class's block weights
            n, d = f.shape
            return _l2n(f.reshape(n, self.blocks, d // self.blocks)).reshape(n, d) @ args[0].t()
        if self.kind == "ridge":
            return f @ args[0]  # (F, C)
        if self.kind == "linear":
            return f @ args[0].t() + args[1]
        diff = _l2n(f).unsqueeze(0) - args[0].unsqueeze(1)  # gaussian: (C, N, F)
        return -(torch.matmul(diff, args[1]) * diff).sum(-1).t()


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
