"""Errors raised by the edgecl runtime. Each one leaves the bundle untouched."""


class EdgeclRuntimeError(Exception):
    """Base class of every runtime error."""


class InvalidInputError(EdgeclRuntimeError, ValueError):
    """Images or arguments that the bundle cannot take (shape, dtype, range, empty)."""


class BundleError(EdgeclRuntimeError):
    """A bundle that cannot be used."""


class MissingFileError(BundleError, FileNotFoundError):
    """A bundle directory or one of its files is absent."""


class CorruptBundleError(BundleError):
    """A file is unreadable, or its checksum differs from the manifest."""


class IncompatibleBundleError(BundleError):
    """The manifest's format is not one this runtime reads."""


class DeviceUnavailableError(EdgeclRuntimeError):
    """The requested execution device (e.g. CUDA) is not available."""
