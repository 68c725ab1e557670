"""Continual learners. Importing this package registers every learner module."""

from . import coda_prompt, dualprompt, l2p, simplecil  # noqa: F401  (registers)
from . import aper, ease, vpt  # noqa: F401  (registers)
from . import fecam, ranpac, slca  # noqa: F401  (registers)
from . import cofima, lae  # noqa: F401  (registers)
from . import dap, esn, promptfusion  # noqa: F401  (registers)
from . import proof, zscl  # noqa: F401  (registers)
from .base import Learner
from .registry import LEARNERS, create_learner, register_learner

__all__ = ["LEARNERS", "Learner", "create_learner", "register_learner"]
