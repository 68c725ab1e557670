"""Image data sets for class-incremental learning."""

from .dataset import ArrayDataset, BatchLoader
from .sources import DataError, load_dataset
from .synthetic import class_names as shapes_class_names
from .synthetic import make_shapes

__all__ = ["ArrayDataset", "BatchLoader", "DataError", "load_dataset", "make_shapes", "shapes_class_names"]
