"""The data layer's error, in a module of its own so that every data source can raise it."""

from ..errors import EdgeclError


class DataError(EdgeclError, ValueError):
    """A data source that cannot be read as a class-labelled image set."""
