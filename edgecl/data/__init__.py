"""Image data sets for class-incremental learning.

Names are imported on first use (PEP 562), so that ``edgecl.data.glyphs`` / ``.emoji`` worker processes
import numpy and Pillow but not torch.
"""

import importlib

_EXPORTS = {
    "ArrayDataset": ".dataset",
    "BatchLoader": ".dataset",
    "DataError": ".errors",
    "load_dataset": ".sources",
    "make_shapes": ".synthetic",
    "shapes_class_names": ".synthetic",
    "make_glyphs": ".glyphs",
    "make_emoji": ".emoji",
    "pretrain_corpus": ".glyphs",
    "pretrain_batches": ".glyphs",
}
_RENAMED = {"shapes_class_names": "class_names"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value
