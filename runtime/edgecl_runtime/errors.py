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


class StorageError(BundleError):
    """The operating system refused a read or write of a bundle file: disk full, permission denied,
    read-only file system, I/O error (``errno`` holds the OS error number).

    Raised only before an update's commit point, so the bundle is unchanged and the update can be
    retried once the cause is fixed; a failure after the commit point is a warning, not an error.
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class UnsafeFileError(BundleError):
    """A symbolic link or other non-regular file stands where the bundle expects one of its own files
    (or the optimised-model cache directory); the runtime neither reads nor writes through it."""


class LimitExceededError(InvalidInputError):
    """An image, array or document exceeds a documented resource limit (``edgecl_runtime.limits``)."""


class SignatureError(BundleError):
    """A device configured with public keys met an unsigned bundle or update, a signature by another key,
    or an update it cannot sign (no signing key); see ``edgecl_runtime.signing``."""
