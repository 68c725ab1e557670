"""Errors raised by the edgecl runtime. Each one leaves the bundle on disk untouched.

Every failure the runtime can report is one of these types (all subclasses of
``EdgeclRuntimeError``), with a message that names the file, field or input at
fault. ``docs/bundle-format.md`` lists which one is raised when.
"""


class EdgeclRuntimeError(Exception):
    """Base class of every runtime error."""


class InvalidInputError(EdgeclRuntimeError, ValueError):
    """Images, class names or arguments the bundle cannot take (shape, dtype, range, empty, bad name)."""


class BundleError(EdgeclRuntimeError):
    """A bundle that cannot be used, or an operation a bundle does not allow."""


class MissingFileError(BundleError, FileNotFoundError):
    """A bundle directory or one of its files is absent."""


class CorruptBundleError(BundleError):
    """A file is unreadable, violates the manifest schema, or its checksum differs from the manifest."""


class TamperedFileError(CorruptBundleError):
    """A file is intact as a file but its sha256 or size differs from the manifest.

    ``Bundle.load(..., trust_modified=True)`` (CLI ``--trust-modified``) accepts it,
    with a warning and a record in the manifest's ``trust_log``.
    """


class IncompatibleBundleError(BundleError):
    """The manifest's format version is not one this runtime reads, or two bundles cannot be merged."""


class LockTimeoutError(BundleError, TimeoutError):
    """Another process held the bundle's update lock for longer than the timeout."""


class DeviceUnavailableError(EdgeclRuntimeError):
    """The requested execution device (e.g. CUDA) is not available."""


class MissingDependencyError(EdgeclRuntimeError, ImportError):
    """A package the operation needs is not installed (the message names the install command)."""
