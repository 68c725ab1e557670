"""Class names to text embeddings on the device: the byte tokenizer and the bundle's text tower.

**Tokenizer** (``edgecl-bytes`` version 1; the same in numpy here, in torch training and in
JavaScript, docs/clip.md): a name is normalised (ASCII ``a-z`` upper-cased, runs of ASCII
whitespace collapsed to one space, leading/trailing whitespace removed; every other character is
kept), encoded as UTF-8, cut to ``context_length - 2`` bytes and framed::

    [SOT] byte_1 + 1 ... byte_k + 1 [EOT] 0 ... 0      (pad 0, byte b -> b + 1, SOT 257, EOT 258)

The end-of-text id is the largest, so a CLIP text transformer pools at ``argmax(tokens)``.
Unicode character names (``unicodedata.name``) are upper-case ASCII words, so
``"grinning face"`` and ``"GRINNING FACE"`` are the same tokens.

**Text tower** (``TextTower``): a bundle exported with a CLIP text tower holds ``text.onnx``
(``tokens`` int64 ``(N, L)`` -> ``text_embedding`` ``(N, E)`` and ``text_prototype`` ``(N, D)``,
a prototype in the bundle's image-feature space) and a manifest section ``text`` naming the file,
its outputs and the tokenizer (docs/bundle-format.md). ``Bundle.add_class(name, text=...)`` uses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CorruptBundleError, IncompatibleBundleError, InvalidInputError

BYTES_V1: dict[str, Any] = {
    "kind": "edgecl-bytes",
    "version": 1,
    "context_length": 64,
    "vocab_size": 259,
    "pad_id": 0,
    "byte_offset": 1,
    "sot_id": 257,
    "eot_id": 258,
    "normalize": "ascii-upper, collapse-ascii-whitespace",
}
TOKENS_INPUT = "tokens"
EMBEDDING_OUTPUT = "text_embedding"
PROTOTYPE_OUTPUT = "text_prototype"
TEXT_HEADS = ("prototype_cosine", "proof_fusion")  # heads whose classes a text prototype (one example) can make
_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalize(text: str) -> str:
    """``text`` with ASCII letters upper-cased and ASCII whitespace runs collapsed (see module doc)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a class name must be a string, got {type(text).__name__}")
    return _SPACE.sub(" ", text.translate(_UPPER)).strip(" ")


def check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` if it is a tokenizer this runtime implements, else ``IncompatibleBundleError``."""
    if not isinstance(spec, dict) or spec.get("kind") != "edgecl-bytes" or spec.get("version") != 1:
        raise IncompatibleBundleError(f"unknown text tokenizer {spec!r}: this runtime reads edgecl-bytes version 1")
    wrong = {k: spec.get(k) for k in BYTES_V1 if k != "context_length" and spec.get(k) != BYTES_V1[k]}
    n = spec.get("context_length")
    if wrong or not isinstance(n, int) or n < 3:
        raise IncompatibleBundleError(f"tokenizer edgecl-bytes v1 with unexpected fields {wrong or {'context_length': n}}")
    return spec


def tokenize(texts: Sequence[str] | str, spec: dict[str, Any] = BYTES_V1) -> np.ndarray:
    """int64 tokens ``(N, context_length)`` of ``texts`` (one string or a list of them)."""
    spec = check_spec(spec)
    texts = [texts] if isinstance(texts, str) else list(texts)
    n = spec["context_length"]
    out = np.zeros((len(texts), n), dtype=np.int64)
    for i, text in enumerate(texts):
        data = normalize(text).encode("utf-8")[: n - 2]
        if not data:
            raise InvalidInputError(f"cannot embed an empty name: {text!r}")
        out[i, 0] = spec["sot_id"]
        out[i, 1 : 1 + len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + spec["byte_offset"]
        out[i, 1 + len(data)] = spec["eot_id"]
    return out


def text_section(manifest: dict[str, Any], where: str = "bundle") -> dict[str, Any]:
    """The manifest's ``text`` section, checked; ``IncompatibleBundleError`` for a bundle without a text tower."""
    section = manifest.get("text")
    if section is None:
        raise IncompatibleBundleError(
            f"{where} has no text tower: a class can be added by name only to a bundle exported from a CLIP "
            "backbone (e.g. edgecl-clip-tiny) with a prototype head; add it from images instead"
        )
    if not isinstance(section, dict) or not isinstance(section.get("file"), str) or section["file"] not in manifest.get("files", {}):
        raise CorruptBundleError(f"manifest field 'text' must name a text tower file listed in 'files', got {section!r}")
    check_spec(section.get("tokenizer"))
    return section


class TextTower:
    """``text.onnx`` of a bundle: names -> prototypes ``(N, D)`` in the bundle's feature space."""

    def __init__(self, path: Path, section: dict[str, Any], threads: int | None = None):
        from .session import require_onnxruntime

        ort = require_onnxruntime()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.section = section
        self.tokenizer = check_spec(section["tokenizer"])
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def tokenize(self, names: Sequence[str] | str) -> np.ndarray:
        return tokenize(names, self.tokenizer)

    def run(self, names: Sequence[str] | str, output: str = PROTOTYPE_OUTPUT) -> np.ndarray:
        """``output`` (``text_prototype`` or ``text_embedding``) of ``names``, float32 ``(N, dim)``."""
        return self.session.run([output], {TOKENS_INPUT: self.tokenize(names)})[0].astype(np.float32)
