"""edgecl device runtime: numpy + onnxruntime only (no torch).

    from edgecl_runtime import Bundle
    b = Bundle.load("bundle/")            # CUDA when onnxruntime has it, else CPU
    b.predict(images).labels              # images: uint8 (N, H, W, 3)
    b.add_class("mug", few_images)        # learned, journaled and persisted atomically
    b.remove_class("mug"); b.history(); b.rollback(0); b.compact(); b.merge(other, "out/")

Bundle format and guarantees: docs/bundle-format.md.
"""

__version__ = "0.1.0"

from .bundle import AddClassResult, Bundle, Prediction
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
from .manifest import FORMAT_VERSION

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
