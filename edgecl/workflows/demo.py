"""The whole pipeline on the embedded default: train -> export -> predict -> add a class on the device."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from edgecl_runtime import Bundle

from ..data import make_shapes
from ..experiment import RunConfig, run_experiment
from .export import export_run


def run_demo(workdir: str | Path, holdout: int = 5, log: Callable[[str], None] = print,
             step: Callable[[str], None] | None = None, progress: Callable | None = None) -> dict[str, float]:
    """SimpleCIL on ``100 - holdout`` embedded shapes classes, exported to ``workdir/bundle``, which then
    predicts fresh images and learns the ``holdout`` other classes from 5 examples each.

    ``workdir`` is replaced. ``log`` gets the lines of each step, ``step`` their headings (default ``log``),
    ``progress`` goes to ``run_experiment``. Returns the top-1 accuracies (%): ``seen`` (the trained classes,
    before any device class), ``new`` and ``all`` (after adding the classes and reloading the bundle).
    """
    step = step or log
    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    n_train = 100 - holdout
    step(f"1/4 train: SimpleCIL on {n_train} embedded shapes classes, 10 per task")
    run_experiment(RunConfig(dataset=f"shapes:{n_train}"), out_dir=work / "run", log=log, progress=progress)
    step("2/4 export: ONNX bundle")
    rep = export_run(work / "run", work / "bundle")
    log(f"bundle {rep.path}: {rep.bytes / 1e6:.1f} MB, ONNX vs torch max abs diff {rep.parity_max_abs_diff:.2e}")
    step("3/4 runtime predict (onnxruntime, no torch in the loop)")
    bundle = Bundle.load(work / "bundle")
    _, test = make_shapes(100, 1, 20, seed=7)
    names = np.array(test.class_names)[test.labels]
    seen = np.isin(names, bundle.classes)
    pred = bundle.predict(test.images[seen])
    acc = np.mean(np.array(pred.labels) == names[seen])
    log(f"device: {bundle.device}; top-1 on {seen.sum()} fresh images of {len(bundle.classes)} classes: {100 * acc:.2f}%")
    step(f"4/4 add-class on the device: {holdout} unseen classes from 5 examples each")
    train_new, _ = make_shapes(100, 5, 1, seed=11)
    for c in range(n_train, 100):
        name = train_new.class_names[c]
        res = bundle.add_class(name, train_new.images[train_new.labels == c])
        log(f"  added {name!r} in {res.seconds * 1e3:.1f} ms")
    reloaded = Bundle.load(work / "bundle")
    new = ~seen
    acc_new = np.mean(np.array(reloaded.predict(test.images[new]).labels) == names[new])
    acc_all = np.mean(np.array(reloaded.predict(test.images).labels) == names)
    log(f"after reload: new classes recognised {100 * acc_new:.2f}% ({new.sum()} images), "
        f"all {len(reloaded.classes)} classes {100 * acc_all:.2f}%")
    return {"seen": 100 * float(acc), "new": 100 * float(acc_new), "all": 100 * float(acc_all)}
