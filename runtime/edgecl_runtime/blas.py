"""numpy's BLAS thread pool, held to one thread while the runtime works next to onnxruntime.

Why: numpy's OpenBLAS starts one worker thread per core, and after every
multi-threaded call (a head's ``(N, D) @ (D, C)`` product at batch 32 is
one) its workers busy-wait for a while before they sleep. The next
``session.run`` then shares the cores with spinning threads that have nothing
to do (measured: benchmarks/results/runtime-resnet10t+mobilenetv2+vit-tiny.md).
The head's product is tiny next to the backbone, so one BLAS thread costs
nothing there, and onnxruntime keeps the cores.

``limit(n)`` sets the number of BLAS threads for the duration of a ``with``
block and restores the previous number after it. It controls the OpenBLAS
that numpy loaded (the ``scipy_openblas`` of numpy's wheels, or a system
OpenBLAS), found through ctypes; with another BLAS (MKL, Accelerate) it does
nothing, and ``backend()`` says so. The runtime depends on nothing but numpy
and onnxruntime, so this is done here instead of with ``threadpoolctl``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from contextlib import contextmanager
from typing import Iterator

# (setter, getter) symbol pairs, the 64-bit-integer builds of numpy's wheels first
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)

_lock = threading.Lock()
_found: tuple | None = None  # (library path, setter, getter) or () when there is none
_depth = 0  # limit() blocks open, in any thread: the first sets the limit, the last restores _saved
_saved = 0


def _candidates() -> list[str]:
    """OpenBLAS libraries to try: the one numpy's wheel ships first, then those loaded in this process.

    numpy's own comes first because other libraries in the process (torch on
    aarch64, for one) may bring an OpenBLAS of their own; the loaded list
    (Linux) finds a system OpenBLAS that a distribution's numpy links to.
    """
    import numpy

    root = os.path.dirname(os.path.dirname(numpy.__file__))
    paths: list[str] = []
    for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):
        paths += sorted(glob.glob(os.path.join(root, pattern)))
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.rsplit(" ", 1)[-1].strip()
                if "openblas" in os.path.basename(p).lower() and p not in paths:
                    paths.append(p)
    except OSError:
        pass
    return paths


def _library() -> tuple:
    global _found
    if _found is None:
        _found = ()
        for path in _candidates():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for setter, getter in _SYMBOLS:
                if hasattr(lib, setter) and hasattr(lib, getter):
                    set_fn, get_fn = getattr(lib, setter), getattr(lib, getter)
                    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                    _found = (path, set_fn, get_fn)
                    break
            if _found:
                break
    return _found


def backend() -> str | None:
    """Path of the OpenBLAS library this module controls, or None (then ``limit`` does nothing)."""
    found = _library()
    return found[0] if found else None


def threads() -> int | None:
    """numpy's current number of BLAS threads (None when the BLAS is not one this module controls)."""
    found = _library()
    return int(found[2]()) if found else None


@contextmanager
def limit(n: int | None = 1) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS threads (``None``: leave numpy's setting alone).

    Blocks may nest and overlap across threads: the first one to enter sets the
    limit, the last one to leave restores the number there was before.
    """
    global _depth, _saved
    found = _library() if n is not None else ()
    if not found:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = int(found[2]())
            if _saved > n:
                found[1](int(n))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved > n:
                found[1](_saved)
