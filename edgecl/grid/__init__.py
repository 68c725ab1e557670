"""Result grids: learners x backbones x datasets x protocols x seeds, run serially or on Ray.

``GridSpec`` (``.spec``) names the axes and expands them into ``GridRun``s keyed by
``run_key``; ``run_one`` (``.run``) runs one and returns its record; ``run_grid``
(``.runner``) runs the missing ones of a grid through an executor (``.executors``:
``SerialExecutor``, ``RayExecutor``) and reports after each; ``.report`` assembles,
merges and writes reports. ``benchmarks/cil_table.py`` is the command line.
"""

from .executors import RayExecutor, SerialExecutor, make_executor
from .report import assemble, machine_info, merge_reports, read_json, write_json
from .run import VOLATILE_FIELDS, outcome, run_one
from .runner import run_grid
from .spec import BackboneChoice, GridRun, GridSpec, Protocol, num_classes, parse_backbones, run_key, split_list

__all__ = [
    "VOLATILE_FIELDS",
    "BackboneChoice",
    "GridRun",
    "GridSpec",
    "Protocol",
    "RayExecutor",
    "SerialExecutor",
    "assemble",
    "machine_info",
    "make_executor",
    "merge_reports",
    "num_classes",
    "outcome",
    "parse_backbones",
    "read_json",
    "run_grid",
    "run_key",
    "run_one",
    "split_list",
    "write_json",
]
