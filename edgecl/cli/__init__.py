"""The training verbs of ``edgecl``, one module per group of commands (torch).

* ``train``: train, export, learners, demo
* ``pretrain``: pre-train the embedded backbones
* ``backbones``: list embedded and named pre-trained backbones, installed or not
* ``data``: data preview (numpy + Pillow)
* ``cache``: see and clear the cache by section

The ``edgecl`` command itself belongs to the runtime distribution
(``edgecl_runtime.cli``, device verbs); it finds these commands through the
``edgecl.commands`` entry points in ``pyproject.toml``. ``main`` is that command.
"""

from edgecl_runtime.cli import main

__all__ = ["main"]
