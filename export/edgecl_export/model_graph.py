"""The single-file model of a bundle: backbone, fixed feature transform and head scoring in one ONNX graph.

``model.onnx`` takes ``images`` and the head's state as inputs and returns
``features`` (what on-device learning uses) and ``scores``. The head state
enters as graph inputs (``edgecl_runtime.heads`` ``graph_inputs``), so classes
added on the device never change the graph, and any ONNX Runtime binding runs
the file. Fixed transforms of the head (RanPAC's random projection and ReLU,
FeCAM's Tukey transform) move from the head's arrays into the graph here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecl.onnx_graph import INPUT_NAME, ExportError

FEATURES = "features"
SCORES = "scores"


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


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


class RandomReLU(nn.Module):
    """RanPAC's fixed random projection ``relu(e W_rand)``."""

    def __init__(self, w_rand: np.ndarray):
        super().__init__()
        self.register_buffer("w", torch.from_numpy(np.asarray(w_rand, np.float32).copy()))

    def forward(self, e):
        return torch.relu(e @ self.w)


class Tukey(nn.Module):
    """FeCAM's signed power transform ``sign(e) |e|^beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def forward(self, e):
        return torch.sign(e) * torch.abs(e).pow(self.beta)


def scorer(kind: str, head) -> nn.Module:
    if kind == "subspace_cosine":
        return SubspaceScorer(head.blocks)
    if kind == "proof_fusion":  # PROOF's projections and fusion module, fixed weights from the head
        from edgecl.learners.proof import ProofFusion

        return ProofFusion.from_arrays(head.arrays())
    table = {"prototype_cosine": PrototypeScorer, "ridge": RidgeScorer, "linear": LinearScorer, "gaussian": GaussianScorer}
    if kind not in table:
        raise ExportError(f"no single-file scoring for head kind {kind!r}")
    return table[kind]()


def fixed_transform(kind: str, arrays: dict[str, np.ndarray]) -> tuple[nn.Module | None, dict[str, np.ndarray]]:
    """The head's fixed feature transform as a torch module, and the head arrays without it."""
    if kind == "ridge" and "W_rand" in arrays:
        rest = {k: v for k, v in arrays.items() if k != "W_rand"}
        return RandomReLU(arrays["W_rand"]), rest
    if kind == "gaussian" and float(arrays["tukey_beta"]) != 1.0:
        return Tukey(float(arrays["tukey_beta"])), {**arrays, "tukey_beta": np.asarray(1.0, arrays["tukey_beta"].dtype)}
    return None, arrays


class FeatureModule(nn.Module):
    """The learner's embedding module followed by the head's fixed transform."""

    def __init__(self, embedding: nn.Module, transform: nn.Module | None):
        super().__init__()
        self.embedding, self.transform = embedding, transform

    def forward(self, x):
        e = self.embedding(x)
        return e if self.transform is None else self.transform(e)


def export_scorer(kind: str, head, path: Path, opset: int) -> list[str]:
    """Write the scoring graph ``(features, *head inputs) -> scores``; returns the head input names."""
    inputs = {k: np.asarray(v, np.float32) for k, v in head.graph_inputs().items()}
    names = list(inputs)
    f = torch.zeros(2, head.dim)
    example = (f, *(torch.from_numpy(v.copy()) for v in inputs.values()))
    axes = {FEATURES: {0: "batch"}, SCORES: {0: "batch", 1: "classes"}}
    for name, v in inputs.items():  # the class axis of every head input
        axes[name] = {int(np.argmax([d == head.num_classes for d in v.shape])): "classes"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scorer(kind, head), example, str(path), dynamo=False, opset_version=opset,
                          input_names=[FEATURES, *names], output_names=[SCORES], dynamic_axes=axes)
    return names


def combine(features_path: Path, scorer_path: Path, out_path: Path, metadata: dict[str, str]) -> None:
    """``model.onnx``: the features graph feeding the scorer, both outputs kept, ``metadata_props`` set."""
    import onnx
    from onnx import compose

    feat, score = onnx.load(str(features_path)), onnx.load(str(scorer_path))
    topological_sort(feat.graph)
    score = compose.add_prefix(score, "head/", rename_inputs=False, rename_outputs=False)
    score.ir_version = feat.ir_version
    merged = compose.merge_models(feat, score, io_map=[(FEATURES, FEATURES)], outputs=[FEATURES, SCORES])
    onnx.helper.set_model_props(merged, metadata)
    onnx.checker.check_model(merged, full_check=True)
    onnx.save(merged, str(out_path))


def topological_sort(graph) -> None:
    """Order ``graph.node`` so that every node comes after the producers of its inputs (in place).

    The fp16 converter appends the casts of the graph inputs at the end of the
    node list; onnxruntime accepts that, the ONNX checker of a merged model does not.
    """
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ExportError("the merged model.onnx graph has a cycle or an undefined input")
        for n in ready:
            known.update(n.output)
        ordered += ready
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def metadata(kind: str, classes: list[str], preprocess: dict, head_inputs: dict, format_version: int) -> dict[str, str]:
    """``metadata_props`` of ``model.onnx``: string key/values stored in the ONNX file (Python's onnxruntime
    returns them from ``get_modelmeta().custom_metadata_map``; runtime/js reads them from the protobuf)."""
    return {
        "edgecl.format_version": str(format_version),
        "edgecl.head_kind": kind,
        "edgecl.classes": json.dumps(classes, ensure_ascii=False),
        "edgecl.preprocess": json.dumps(preprocess),
        "edgecl.head_inputs": json.dumps(head_inputs),
        "edgecl.inputs": INPUT_NAME,
        "edgecl.outputs": json.dumps([FEATURES, SCORES]),
    }
