"""The schema of ``manifest.json``: one table of fields, read by the runtime and written by the exporter.

Each ``Field`` names a dotted path, a check and the message of a violation,
the format versions that have it, and whether a reader needs it:

* ``read=True``: checked on every load (``edgecl_runtime.manifest.validate``);
  a bundle without it is refused with a ``CorruptBundleError`` naming the field.
* ``read=False``: written by every export of the current version and checked
  there (``edgecl_runtime.manifest.new_manifest``), described in
  ``docs/bundle-format.md``, but not needed to predict or update, so a reader
  does not refuse a bundle that lacks it.

``rules(version)`` is what a reader checks; ``rules(version, writing=True)``
what a writer of ``version`` must produce (a superset).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HEX64 = re.compile(r"^[0-9a-f]{64}$")
ID = re.compile(r"^[0-9A-Za-z_-]{8,80}$")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


def is_str(v) -> bool:
    return isinstance(v, str)


def is_dict(v) -> bool:
    return isinstance(v, dict)


def nonneg_int(v) -> bool:
    return is_int(v) and v >= 0


def pos_int(v) -> bool:
    return is_int(v) and v > 0


def file_name(v) -> bool:
    return isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v and "\\" not in v


def names(v) -> bool:
    return isinstance(v, list) and all(type(x) is str and x for x in v)


def list_of(check: Callable, n: int | None = None) -> Callable:
    return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(check(x) for x in v)


def an_id(v) -> bool:
    return isinstance(v, str) and bool(ID.match(v))


def hex64(v) -> bool:
    return isinstance(v, str) and bool(HEX64.match(v))


@dataclass(frozen=True)
class Field:
    path: str  # dotted: "model.file"
    check: Callable[[Any], bool]
    msg: str  # completes "manifest field 'PATH' ..."
    since: int = 1  # first format version with the field
    until: int | None = None  # last format version with it (None: still current)
    read: bool = True  # False: written and documented, not needed by a reader


_OBJ, _FILE, _NAMES = "must be an object", "must be a file name inside the bundle", "must be a list of non-empty strings"

FIELDS: tuple[Field, ...] = (
    Field("edgecl_version", is_str, "must be a string"),
    Field("created", is_str, "must be a time stamp string", read=False),
    Field("backbone", is_dict, _OBJ),
    Field("backbone.file", file_name, _FILE, until=2),
    Field("backbone.embedding_dim", pos_int, "must be a positive integer"),
    Field("backbone.name", is_str, "must be a string", since=3, read=False),
    Field("backbone.timm_name", is_str, "must be a string", since=3, read=False),
    Field("backbone.weights", is_dict, _OBJ, since=3, read=False),
    Field("backbone.precision", is_str, "must be a string", since=3, read=False),
    Field("preprocess", is_dict, _OBJ),
    Field("preprocess.input_size", list_of(pos_int, 3), "must be 3 positive integers [C, H, W]"),
    Field("preprocess.mean", list_of(is_num, 3), "must be 3 numbers"),
    Field("preprocess.std", list_of(lambda x: is_num(x) and x > 0, 3), "must be 3 positive numbers"),
    Field("preprocess.resize", is_str, "must be a string", since=3, read=False),
    Field("head", is_dict, _OBJ),
    Field("head.kind", is_str, "must be a string"),
    Field("head.file", file_name, _FILE),
    Field("head.generation", nonneg_int, "must be an integer >= 0", since=3, read=False),
    Field("classes", names, _NAMES),
    Field("files", lambda v: isinstance(v, dict) and all(file_name(k) for k in v), "must map file names to checksums"),
    Field("bundle_id", an_id, "must be an id of 8-80 letters, digits, _ or -", since=2),
    Field("head.arrays", lambda v: isinstance(v, dict) and len(v) > 0, "must describe the head arrays", since=2),
    Field("base", is_dict, _OBJ, since=2),
    Field("base.id", an_id, "must be an id", since=2),
    Field("base.file", file_name, _FILE, since=2),
    Field("base.seq", nonneg_int, "must be an integer >= 0", since=2),
    Field("base.classes", names, _NAMES, since=2),
    Field("base.arrays", lambda v: isinstance(v, dict) and len(v) > 0, "must describe the base head arrays", since=2),
    Field("journal", is_dict, _OBJ, since=2),
    Field("journal.file", file_name, _FILE, since=2),
    Field("journal.seq", nonneg_int, "must be an integer >= 0", since=2),
    Field("journal.bytes", nonneg_int, "must be an integer >= 0", since=2),
    Field("journal.digest", hex64, "must be a sha256 hex digest", since=2),
    Field("checksum", hex64, "must be a sha256 hex digest", since=2),
    # Version 3: one ONNX file, ``model.file`` (backbone + fixed transform + head scoring), in place of
    # ``backbone.file``; head files in the safetensors layout (``edgecl_runtime.tensors``).
    Field("model", is_dict, _OBJ, since=3),
    Field("model.file", file_name, _FILE, since=3),
    Field("model.head_inputs", list_of(is_str), "must list the head's input names", since=3),
    Field("model.inputs", list_of(is_str), "must list the graph's input names", since=3, read=False),
    Field("model.outputs", list_of(is_str, 2), "must name the features and scores outputs", since=3, read=False),
    Field("model.feature_dim", pos_int, "must be a positive integer", since=3, read=False),
    Field("model.opset", pos_int, "must be a positive integer", since=3, read=False),
    Field("model.exporter", is_str, "must be a string", since=3, read=False),
    Field("learner", is_dict, _OBJ, since=3, read=False),
    Field("learner.name", is_str, "must be a string", since=3, read=False),
    Field("learner.hparams", is_dict, _OBJ, since=3, read=False),
    Field("export", is_dict, _OBJ, since=3, read=False),
    Field("precision", is_dict, _OBJ, since=3, read=False),
    Field("precision.backbone", lambda v: v in ("fp32", "fp16", "int8"), "must be fp32, fp16 or int8", since=3, read=False),
    Field("precision.head", lambda v: v in ("fp32", "fp16"), "must be fp32 or fp16", since=3, read=False),
    Field("preprocess.background", list_of(lambda v: is_int(v) and 0 <= v <= 255, 3),
          "must be 3 integers 0..255 (the RGB transparent pixels are composited on)", since=3, read=False),
    Field("unknown", is_dict, _OBJ, since=3, read=False),
    Field("unknown.score", is_str, "must name an unknown score (edgecl_runtime.unknown)", since=3, read=False),
    Field("unknown.threshold", lambda v: v is None or is_num(v), "must be a number or null", since=3, read=False),
)


def rules(version: int, writing: bool = False) -> list[Field]:
    """The fields a manifest of format ``version`` has: what a reader checks, or (``writing``) all a writer sets."""
    return [f for f in FIELDS if f.since <= version and (f.until is None or version <= f.until) and (writing or f.read)]
