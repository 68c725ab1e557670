"""Former home of ``export_run``, now ``edgecl.workflows.export``: an alias kept for existing imports
(``from edgecl.pipeline import export_run``). It sits in the workflows layer, above ``edgecl_export``."""

from .workflows.export import (ExportError, ExportReport, RunDirError, export_run, precision_from_run,
                               run_precision_data)

__all__ = ["ExportError", "ExportReport", "RunDirError", "export_run", "precision_from_run", "run_precision_data"]
