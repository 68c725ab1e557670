"""Classifier heads the runtime evaluates in numpy on top of backbone embeddings.

Importing this package registers every head kind (one module each).
"""

from . import gaussian, linear, prototype, proof, ridge, subspace  # noqa: F401  (registers)
from .base import HEADS, Head, head_class, l2_normalize, register_head

__all__ = ["HEADS", "Head", "head_class", "l2_normalize", "register_head"]
