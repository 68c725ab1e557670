"""What needs both the training side and the exporter: the layer above ``edgecl_export``.

``edgecl`` (training, saved runs, data) sits below ``edgecl_export``, which imports it; the workflows
here import both (and the CLI imports them), so every import points down:
``edgecl_runtime < edgecl < edgecl_export < edgecl.workflows < edgecl.cli``.

* ``export``: a saved run directory -> a bundle (``export_run``), with calibration and check images
  from the run's own data.
* ``demo``: train -> export -> predict -> add a class on the device, on the embedded shapes.
"""

from .demo import run_demo
from .export import ExportError, ExportReport, RunDirError, export_run, precision_from_run, run_precision_data

__all__ = ["ExportError", "ExportReport", "RunDirError", "export_run", "precision_from_run", "run_demo",
           "run_precision_data"]
