"""The ``edgecl`` command line.

The runtime distribution owns the command and its device verbs (numpy +
onnxruntime only): ``predict``, ``add-class``, ``remove-class``, ``eval``,
``info``, ``history``, ``rollback``, ``compact``, ``merge``, ``diff``, ``bench``, ``serve``.
The training distribution (``edgecl``) adds its verbs (``train``, ``export``,
``demo``, ...) through the ``edgecl.commands`` entry-point group, so the runtime
never imports training code; without it those verbs say what to install.
"""

from . import bench, device, serve, sign, store  # noqa: F401  (registers the commands)
from .common import main

__all__ = ["main"]
