"""A CLIP text tower -> ``text.onnx`` of a bundle, with the manifest's ``text`` section.

``text.onnx``: ``tokens`` int64 ``(N, L)`` (the byte tokenizer of ``edgecl_runtime.text``) ->
``text_embedding`` ``(N, E)`` (CLIP's ``encode_text``) and ``text_prototype`` ``(N, D)`` (the
class prototype in the bundle's feature space: ``ClipModel.prototypes_from_text``, L2-normalised
when the bundle's features are unit CLIP image embeddings). The runtime adds a class by name from
``text_prototype`` (``Bundle.add_class(name, text=...)``).

A bundle gets a text tower when its backbone is a CLIP image tower (a ``ClipBackbone``, e.g.
``edgecl-clip-tiny``), its features are that tower's embeddings or their unit rows (no other
transform) and its head takes a text prototype (``edgecl_runtime.text.TEXT_HEADS``);
``text_tower_refusal`` says why not otherwise.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from edgecl_runtime import text as device_text
from edgecl.onnx_graph import ExportError, scaled_diff

TEXT_ONNX = "text.onnx"
TEXT_HEADS = device_text.TEXT_HEADS


class TextGraph(nn.Module):
    """tokens -> (text embedding, text prototype) of a ``ClipModel`` (unit prototype rows when ``unit``)."""

    def __init__(self, clip, unit: bool = False):
        super().__init__()
        self.clip, self.unit = clip, unit

    def forward(self, tokens: torch.Tensor):
        emb = self.clip.encode_text(tokens)
        proto = self.clip.prototypes_from_text(emb)
        return emb, torch.nn.functional.normalize(proto, dim=-1) if self.unit else proto


def text_tower_refusal(clip, kind: str, transformed: bool, dim: int) -> str | None:
    """Why a bundle with head ``kind`` cannot take ``clip``'s text tower, or ``None`` if it can."""
    if clip.cfg.tokenizer is None:
        return f"{clip.name} uses open_clip's BPE tokenizer; the device runtime implements the byte tokenizer only"
    if kind not in TEXT_HEADS:
        return f"head {kind!r} takes no text prototype (only {', '.join(TEXT_HEADS)})"
    if transformed or dim != clip.embed_dim:
        return f"the bundle's features ({dim}-d{', transformed' if transformed else ''}) are not the CLIP image embeddings"
    return None


def export_text(clip, path: Path, opset: int = 17, unit: bool = False) -> None:
    """Write ``clip``'s text graph to ``path`` (dynamic batch axis)."""
    import onnx

    tokens = torch.from_numpy(device_text.tokenize(["LATIN SMALL LETTER A", "GRINNING FACE"], clip.cfg.tokenizer))
    graph = TextGraph(clip, unit).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (tokens,), str(path), dynamo=False, opset_version=opset,
            input_names=[device_text.TOKENS_INPUT],
            output_names=[device_text.EMBEDDING_OUTPUT, device_text.PROTOTYPE_OUTPUT],
            dynamic_axes={device_text.TOKENS_INPUT: {0: "batch"}, device_text.EMBEDDING_OUTPUT: {0: "batch"},
                          device_text.PROTOTYPE_OUTPUT: {0: "batch"}},
        )
    onnx.checker.check_model(str(path), full_check=True)


PARITY_NAMES = ("LATIN CAPITAL LETTER A", "grinning face", "CJK", "BLACK-FEATHERED NORTH EAST ARROW",
                "a name longer than the context " * 4, "x")


def text_parity(clip, path: Path, names=PARITY_NAMES, unit: bool = False) -> float:
    """Max |onnxruntime - torch| over both outputs of ``names`` (relative above 1, like ``onnx_graph.parity``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = device_text.tokenize(list(names), clip.cfg.tokenizer)
    with torch.no_grad():
        refs = [r.numpy() for r in TextGraph(clip, unit).eval()(torch.from_numpy(tokens))]
    outs = session.run(None, {device_text.TOKENS_INPUT: tokens})
    return max(scaled_diff(o, r) for o, r in zip(outs, refs))


def write_text_tower(clip, tmp: Path, opset: int, tolerance: float, unit: bool = False) -> dict:
    """``tmp/text.onnx`` of ``clip``, parity-checked; returns the manifest's ``text`` section."""
    path = tmp / TEXT_ONNX
    export_text(clip, path, opset, unit)
    diff = text_parity(clip, path, unit=unit)
    if diff > tolerance:
        raise ExportError(f"text.onnx/torch parity failed: max abs diff {diff:.3g} > {tolerance:g}")
    return {
        "file": TEXT_ONNX,
        "model": clip.name,
        "inputs": [device_text.TOKENS_INPUT],
        "outputs": [device_text.EMBEDDING_OUTPUT, device_text.PROTOTYPE_OUTPUT],
        "embedding_dim": clip.embed_dim,
        "tokenizer": clip.cfg.tokenizer,
        "weights": {k: v for k, v in clip.weights.items() if k.startswith("text")},
        "prototype_map": clip.prototype_map is not None,
        "unit_prototype": unit,
        "parity_max_abs_diff": diff,
    }
