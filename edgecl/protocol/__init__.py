"""Class-incremental protocol: splits and metrics."""

from .metrics import IncrementalMetrics
from .splits import ClassIncremental

__all__ = ["ClassIncremental", "IncrementalMetrics"]
