"""``edgecl`` command line, one module per group of commands.

* ``train``: train, export, learners, demo (torch)
* ``pretrain``: pre-train the embedded backbones (torch)
* ``backbones``: list embedded and named pre-trained backbones, installed or not
* ``device``: predict, add-class, eval, info (runtime only: numpy + onnxruntime)
* ``bench``: bench (runtime in a subprocess; torch only for --compare-torch / --dataset)
* ``data``: data preview (numpy + Pillow)
* ``store``: history, rollback, compact, merge, remove-class (runtime only: the bundle journal)

A new command module defines commands on ``common.main`` and is imported here.
"""

from . import backbones, bench, data, device, pretrain, store, train  # noqa: F401  (registers the commands)
from .common import main

__all__ = ["main"]
