"""Resource limits: what the runtime refuses to decode, checked from headers before anything is allocated.

A hostile or mistaken input must not take the device's memory: an image file
or ``.npy`` array whose header declares more pixels than the budget, a head
file whose arrays' declared sizes differ from the manifest (a small deflated
file can declare gigabytes), or a JSON document nested deeper than any bundle
needs, is refused with a ``LimitExceededError`` (an ``InvalidInputError``) or,
inside a bundle, a ``CorruptBundleError``, before it is decoded.

The budgets are module attributes, read at every check, so a program may set
them (``edgecl_runtime.limits.MAX_IMAGE_PIXELS = ...``); their defaults come
from the environment variables of the same name with an ``EDGECL_`` prefix
(``EDGECL_MAX_IMAGE_PIXELS`` ...), else the values below.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptBundleError, LimitExceededError


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(f"EDGECL_{name}", default))
    except ValueError:
        return default
    return value if value > 0 else default


MAX_IMAGE_PIXELS = _env_int("MAX_IMAGE_PIXELS", 1 << 25)  # 32 Mpixel per image (an 8K frame is 33.2 M)
MAX_BATCH_PIXELS = _env_int("MAX_BATCH_PIXELS", 1 << 28)  # 256 Mpixel per call (~3 GiB as float32 RGB)
MAX_HEAD_BYTES = _env_int("MAX_HEAD_BYTES", 1 << 32)  # declared size of one head file's arrays
MAX_JSON_DEPTH = _env_int("MAX_JSON_DEPTH", 32)  # manifests need 5 levels, journal headers 2
_NPY_HEADER_SLACK = 1 << 16  # an .npy member's header on top of its data


# ------------------------------------------------------------------- pixels
def check_pixels(shapes, where: str = "image") -> None:
    """Refuse a batch of ``(H, W)`` sizes with an image over ``MAX_IMAGE_PIXELS`` or a total over ``MAX_BATCH_PIXELS``."""
    total = 0
    for i, s in enumerate(shapes):
        pixels = int(np.prod([int(n) for n in s], dtype=np.int64)) if len(s) else 0
        if pixels > MAX_IMAGE_PIXELS:
            raise LimitExceededError(
                f"{where} {i} has {pixels} pixels (size {tuple(int(n) for n in s)}); the limit is {MAX_IMAGE_PIXELS} "
                "per image (edgecl_runtime.limits.MAX_IMAGE_PIXELS, env EDGECL_MAX_IMAGE_PIXELS)"
            )
        total += pixels
        if total > MAX_BATCH_PIXELS:
            raise LimitExceededError(
                f"the images hold more than {MAX_BATCH_PIXELS} pixels together, the limit per call "
                "(edgecl_runtime.limits.MAX_BATCH_PIXELS, env EDGECL_MAX_BATCH_PIXELS)"
            )


def npy_image_sizes(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The ``(H, W)`` of each image in an array of ``shape`` (HW, HWC or NHWC), for ``check_pixels``."""
    if len(shape) == 4:
        return [tuple(shape[1:3])] * int(shape[0])
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return [tuple(shape[:2])]
    return [tuple(shape[-2:])] if len(shape) >= 2 else [tuple(shape)]


def npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open ``.npy`` stream's header (nothing else is read)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(int(n) for n in shape), np.dtype(dtype)


# --------------------------------------------------------------------- JSON
def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit of its own)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in value)
    return depth


def json_loads(text: str | bytes, where: str) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``MAX_JSON_DEPTH`` (``LimitExceededError``)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        obj = None
        depth = None
    else:
        depth = json_depth(obj)
    if depth is None or depth > MAX_JSON_DEPTH:
        raise LimitExceededError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
    return obj


# --------------------------------------------------------------- head files
def _expected_bytes(entry: dict) -> int:
    return int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize


def check_head_file(path: Path, spec: dict | None, field: str) -> None:
    """Compare a head file's declared array shapes and sizes with the manifest's ``spec`` before decompressing.

    ``.npz`` files (formats 1-2): every zip member's declared uncompressed size and its ``.npy`` header;
    without a ``spec`` (format 1) only the total size is bounded. Safetensors head files (format 3) hold no
    compressed data and ``edgecl_runtime.tensors`` checks their header before mapping them.
    """
    from . import storage

    try:
        fd = storage.open_regular(path)
    except FileNotFoundError:
        return  # the reader reports the missing file
    with os.fdopen(fd, "rb") as f:
        try:
            if path.suffix == ".npz":  # safetensors files are not compressed: tensors.parse checks every offset
                _check_npz(f, spec, f"{path.name}", field)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
            raise CorruptBundleError(f"cannot read head file {path}: {exc}") from exc


def _check_npz(f, spec: dict | None, where: str, field: str) -> None:
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_HEAD_BYTES:
            raise CorruptBundleError(f"{where}: its arrays declare {total} bytes, over MAX_HEAD_BYTES={MAX_HEAD_BYTES}")
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            want = (spec or {}).get(name)
            if want is None:
                continue  # reserved arrays (bounded by the total) and extra members (reported by the reader)
            if info.file_size > _expected_bytes(want) + _NPY_HEADER_SLACK:
                raise CorruptBundleError(
                    f"{where}: array {name!r} declares {info.file_size} bytes, more than manifest field "
                    f"'{field}.{name}' allows ({want['dtype']} {want['shape']})"
                )
            with z.open(info) as member:
                shape, dtype = npy_header(member)
            if list(shape) != list(want["shape"]):
                raise CorruptBundleError(
                    f"{where}: array {name!r} has shape {list(shape)}, manifest field '{field}.{name}.shape' "
                    f"says {want['shape']}"
                )
            if str(dtype) != want["dtype"]:
                raise CorruptBundleError(
                    f"{where}: array {name!r} has dtype {dtype}, manifest field '{field}.{name}.dtype' says {want['dtype']}"
                )
