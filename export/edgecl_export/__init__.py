"""torch -> ONNX bundle export (see ``edgecl_export.bundle`` for the layout).

This package takes a learner and its class names; a saved run directory is
exported by ``edgecl.workflows.export_run``, which reads the run and its data.
"""

from .bundle import ExportReport, export_learner
from edgecl.onnx_graph import ExportError
from .quantize import PrecisionSpec

__all__ = ["ExportError", "ExportReport", "PrecisionSpec", "export_learner"]
