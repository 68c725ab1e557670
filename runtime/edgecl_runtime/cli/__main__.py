"""``python -m edgecl_runtime.cli``: the ``edgecl`` command."""

from . import main

main()
