"""From a saved run to a bundle: what joins the run directory, its data and the exporter.

``edgecl.experiment`` trains and saves a run (``edgecl.rundir``);
``edgecl_export`` turns a learner into a bundle and knows nothing of runs or
data sets. ``export_run`` sits above both: it loads the run, picks real images
of the run's data for the parity and precision checks, and calls
``edgecl_export.export_learner``. The CLI's ``export`` and ``edgecl.workflows.demo`` call it.
"""

from __future__ import annotations

from pathlib import Path

import warnings

import numpy as np

from edgecl_export import ExportError, ExportReport, PrecisionSpec, export_learner
from edgecl_export.openset import UnknownCalibration

from ..data import DataError, load_dataset, make_shapes
from ..rundir import RunDirError, load_run
from ..zoo import backbone_from_run

__all__ = ["ExportError", "ExportReport", "RunDirError", "export_run", "precision_from_run", "run_precision_data"]


def export_run(run_dir: str | Path, out_dir: str | Path, **kwargs) -> ExportReport:
    """Export a saved run directory (see ``edgecl.rundir``) to a bundle; ``kwargs`` go to ``export_learner``.

    Besides random inputs, parity is checked on real images of the run's data
    set when it is the embedded shapes set. ``precision`` may be a name (fp32,
    fp16, int8), whose calibration and check images then come from the run's
    data (``precision_options``: see ``precision_from_run``).
    """
    run, learner = load_run(Path(run_dir), rebuild=backbone_from_run)
    check = kwargs.pop("check_inputs", None)
    if check is None and str(run["config"].get("dataset", "")).startswith("shapes"):
        check = [_shapes_check_batch(run, learner)]
    # the run's directory name, never its path (a bundle travels to devices); the config is for the model card
    source = {"run": Path(run_dir).resolve().name, "metrics": run.get("metrics", {}), "config": run["config"]}
    target = kwargs.pop("unknown_target", 0.95)
    if "unknown" not in kwargs:
        kwargs["unknown"] = run_unknown_calibration(run, learner, target)
    precision = kwargs.pop("precision", "fp32")
    if isinstance(precision, str):  # images for the conversion come from the run's own data
        precision = precision_from_run(run, learner, precision, **kwargs.pop("precision_options", {}))
    return export_learner(learner, run["class_names"], out_dir, check_inputs=check, extra=source, precision=precision,
                          **kwargs)


def run_unknown_calibration(run: dict, learner, target: float = 0.95, per_class: int = 20,
                            seed: int = 0) -> UnknownCalibration | None:
    """Up to ``per_class`` training images of every class of the run, to calibrate the bundle's unknown threshold
    on (``edgecl_runtime.unknown.calibrate``); ``None`` with a warning when the run's data cannot be read."""
    config = run["config"]
    try:
        train, _ = load_dataset(
            config["dataset"], image_size=tuple(learner.backbone.spec.input_size[1:]), seed=config.get("data_seed", 0),
            test_fraction=config.get("test_fraction", 0.2), train_per_class=config.get("train_per_class", 30),
            test_per_class=config.get("test_per_class", 10),
        )
    except (DataError, KeyError, OSError) as exc:
        warnings.warn(f"unknown threshold not calibrated: cannot read the run's data set "
                      f"{config.get('dataset')!r} ({exc}); predict --unknown then needs a number", stacklevel=2)
        return None
    known = {n: i for i, n in enumerate(run["class_names"])}
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.nonzero(train.labels == c)[0])[:per_class]
            for c, name in enumerate(train.class_names) if name in known]
    rows = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    labels = np.array([known[train.class_names[y]] for y in train.labels[rows]], dtype=np.int64)
    desc = f"{len(rows)} train images of {config['dataset']} (up to {per_class} per class, pick seed {seed})"
    return UnknownCalibration(train.images[rows], labels, desc, target)


def _shapes_check_batch(run: dict, learner) -> np.ndarray:
    from edgecl_runtime.preprocess import preprocess

    spec = learner.backbone.spec
    _, test = make_shapes(min(learner.num_classes, 100), 1, 1, seed=run["config"].get("data_seed", 0))
    return preprocess(test.images[:8], spec.input_size, spec.mean, spec.std)


def precision_from_run(run: dict, learner, precision: str, calibration_size: int = 128, head_precision: str = "fp32",
                       allow_divergence: bool = False) -> PrecisionSpec:
    """A ``PrecisionSpec`` whose calibration (train split) and check images (test split) come from the run's data."""
    if precision == "fp32":
        return PrecisionSpec("fp32", head_precision=head_precision)
    n_cal = calibration_size if precision == "int8" else 0
    try:
        cal, desc, check, labels = run_precision_data(
            run["config"], run["class_names"], learner.backbone.spec.input_size[1:], n_cal
        )
    except (DataError, KeyError, OSError) as exc:
        raise ExportError(
            f"cannot read the run's data set {run['config'].get('dataset')!r} for {precision} calibration/check "
            f"({exc}); make it available again, or export fp32"
        ) from exc
    return PrecisionSpec(precision, cal, desc, check, labels, head_precision, allow_divergence)


def run_precision_data(config: dict, class_names: list[str], image_size, n_calibration: int, n_check: int = 256,
                       seed: int = 0) -> tuple[np.ndarray | None, str | None, np.ndarray, np.ndarray]:
    """Calibration images from a run's training data, check images + labels from its test split.

    Returns ``(calibration, description, check_images, check_labels)``; labels
    index ``class_names`` (the learner's order). ``n_calibration=0``: no
    calibration (dynamic quantization).
    """
    train, test = load_dataset(
        config["dataset"], image_size=tuple(image_size), seed=config.get("data_seed", 0),
        test_fraction=config.get("test_fraction", 0.2), train_per_class=config.get("train_per_class", 30),
        test_per_class=config.get("test_per_class", 10),
    )
    known = {n: i for i, n in enumerate(class_names)}
    cal, desc = None, None
    if n_calibration > 0:
        pool = np.nonzero([train.class_names[y] in known for y in train.labels])[0]
        pick = np.sort(np.random.default_rng(seed).choice(pool, min(n_calibration, len(pool)), replace=False))
        cal = train.images[pick]
        desc = f"{len(pick)} train images of {config['dataset']} (data seed {config.get('data_seed', 0)}, pick seed {seed})"
    pool = np.nonzero([test.class_names[y] in known for y in test.labels])[0]
    pick = np.sort(np.random.default_rng(seed + 1).choice(pool, min(n_check, len(pool)), replace=False))
    labels = np.array([known[test.class_names[y]] for y in test.labels[pick]], dtype=np.int64)
    return cal, desc, test.images[pick], labels
