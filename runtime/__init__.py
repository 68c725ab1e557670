"""edgecl device runtime: numpy + onnxruntime only (no torch).

    from runtime import Bundle
    b = Bundle.load("bundle/")            # CUDA when onnxruntime has it, else CPU
    b.predict(images).labels              # images: uint8 (N, H, W, 3)
    b.add_class("mug", few_images)        # learned and persisted atomically
"""

from .bundle import AddClassResult, Bundle, Prediction
from .errors import (
    BundleError,
    CorruptBundleError,
    DeviceUnavailableError,
    EdgeclRuntimeError,
    IncompatibleBundleError,
    InvalidInputError,
    MissingFileError,
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
    "MissingFileError",
    "Prediction",
]
