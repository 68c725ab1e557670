"""``edgecl`` command line, one module per group of commands.

* ``train``: train, export, learners, demo (torch)
* ``pretrain``: pre-train the embedded backbones (torch)
* ``device``: predict, add-class, eval, info, bench (runtime only: numpy + onnxruntime)

A new command module defines commands on ``common.main`` and is imported here.
"""

from . import backbones, device, pretrain, train  # noqa: F401  (registers the commands)
from .common import main

__all__ = ["main"]
