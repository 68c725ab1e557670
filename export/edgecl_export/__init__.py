"""torch -> ONNX bundle export (see ``edgecl_export.bundle`` for the layout)."""

from .bundle import ExportReport, export_learner, export_run
from edgecl.onnx_graph import ExportError

__all__ = ["ExportError", "ExportReport", "export_learner", "export_run"]
