"""edgecl device runtime: numpy + onnxruntime only (no torch).

    from edgecl_runtime import Bundle
    b = Bundle.load("bundle/")            # CUDA when onnxruntime has it, else CPU
    b.predict(images).labels              # images: uint8 (N, H, W, 3)
    b.add_class("mug", few_images)        # learned, journaled and persisted atomically
    b.remove_class("mug"); b.history(); b.rollback(0); b.compact(); b.merge(other, "out/")

Bundle format and guarantees: docs/bundle-format.md.
"""

import importlib

__version__ = "0.1.0"

from .errors import (
    BundleError,
    CorruptBundleError,
    DeviceUnavailableError,
    EdgeclRuntimeError,
    IncompatibleBundleError,
    InvalidInputError,
    LockTimeoutError,
    MissingDependencyError,
    MissingFileError,
    LimitExceededError,
    SignatureError,
    StorageError,
    TamperedFileError,
    UnsafeFileError,
)
# Loaded on first use (PEP 562): the package imports no submodule that imports it back, so
# `import edgecl_runtime.tensors` (or .store, .limits) does not load the ONNX session machinery.
_LAZY = {"AddClassResult": "bundle", "Bundle": "bundle", "Prediction": "bundle", "FORMAT_VERSION": "manifest"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AddClassResult",
    "Bundle",
    "BundleError",
    "CorruptBundleError",
    "DeviceUnavailableError",
    "EdgeclRuntimeError",
    "FORMAT_VERSION",
    "IncompatibleBundleError",
    "InvalidInputError",
    "LockTimeoutError",
    "MissingDependencyError",
    "MissingFileError",
    "Prediction",
    "LimitExceededError",
    "SignatureError",
    "StorageError",
    "TamperedFileError",
    "UnsafeFileError",
]
