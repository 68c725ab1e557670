"""Head files in the safetensors layout, read and written with numpy alone.

A file is ``u64 LE header length N | N bytes of JSON header | data``; the
header maps each array name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets into the data section, little-endian row-major bytes), plus an optional
``"__metadata__"`` of strings. This is the format of the ``safetensors`` package
(https://huggingface.co/docs/safetensors), so any language's safetensors reader
opens a bundle's head file. Every declared shape, dtype and offset is checked
against the file's size before any array is read; nothing is decompressed and
nothing executes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from . import storage
from .errors import CorruptBundleError, MissingFileError

DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
          "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
_NAMES = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 1 << 24  # 16 MiB of JSON header at most
ALIGN = 8  # the header is padded with spaces so that the data starts 8-byte aligned


def _code(dtype: np.dtype) -> str:
    d = np.dtype(dtype)
    d = d.newbyteorder("<") if d.itemsize > 1 else d
    try:
        return _NAMES[d]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in a head file") from None


def to_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """``arrays`` (name -> array, stored in the given order) as safetensors bytes."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, a in arrays.items():
        a = np.asarray(a)
        raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype).tobytes()
        header[name] = {"dtype": _code(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGN)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _header(buf, size: int, where: str) -> tuple[dict, int]:
    if size < 8:
        raise CorruptBundleError(f"{where}: too short for a head file ({size} bytes)")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > MAX_HEADER or 8 + n > size:
        raise CorruptBundleError(f"{where}: header length {n} does not fit the file ({size} bytes)")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptBundleError(f"{where}: unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptBundleError(f"{where}: the header is not a JSON object")
    return header, 8 + n


def _check_entry(name: str, e, data_size: int, where: str) -> tuple[np.dtype, tuple, int, int]:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise CorruptBundleError(f"{where}: entry {name!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if dtype not in DTYPES:
        raise CorruptBundleError(f"{where}: array {name!r} has unknown dtype {dtype!r}")
    ints = lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)  # noqa: E731
    if not ints(shape) or not ints(offsets) or len(offsets) != 2 or len(shape) > 8:
        raise CorruptBundleError(f"{where}: array {name!r} has a malformed shape or offsets")
    begin, end = offsets
    dt = np.dtype(DTYPES[dtype])
    if not begin <= end <= data_size or end - begin != int(np.prod(shape, dtype=object)) * dt.itemsize:
        raise CorruptBundleError(f"{where}: array {name!r} ({dtype} {shape}) does not fit its offsets {offsets}")
    return dt, tuple(shape), begin, end


def parse(buf, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays (read-only views of ``buf``) and metadata of safetensors bytes, every entry validated first."""
    header, start = _header(buf, len(buf), where)
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptBundleError(f"{where}: '__metadata__' must map names to strings")
    entries = {n: _check_entry(n, e, len(buf) - start, where) for n, e in header.items()}
    spans = sorted((b, e) for _, _, b, e in entries.values())
    if any(e > b2 for (_, e), (b2, _) in zip(spans, spans[1:])):
        raise CorruptBundleError(f"{where}: arrays overlap")
    out = {}
    for name, (dt, shape, begin, end) in entries.items():
        a = np.frombuffer(buf, dtype=dt, count=(end - begin) // dt.itemsize, offset=start + begin).reshape(shape)
        out[name] = a if dt.isnative else a.astype(dt.newbyteorder("="))
    return out, meta


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of the head file at ``path``, memory-mapped (pages are read when an array is used)."""
    path = Path(path)
    try:
        with os.fdopen(storage.open_regular(path), "rb") as f:  # never through a symbolic link
            size = os.fstat(f.fileno()).st_size
            buf = np.memmap(f, dtype=np.uint8, mode="r") if size else b""
    except FileNotFoundError:
        raise MissingFileError(f"bundle file missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise CorruptBundleError(f"cannot read head file {path}: {exc}") from exc
    return parse(buf, f"cannot read head file {path}")[0]
