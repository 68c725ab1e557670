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

from edgecl.learners.scoring import fixed_transform, scorer
from edgecl.onnx_graph import INPUT_NAME, ExportError

__all__ = ["FEATURES", "SCORES", "FeatureModule", "combine", "export_scorer", "fixed_transform", "metadata", "scorer"]

FEATURES = "features"
SCORES = "scores"


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
