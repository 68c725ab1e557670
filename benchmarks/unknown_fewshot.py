"""Are classes added on the device from 5 images accepted like trained ones? (docs/unknown.md, issue 30)

    python benchmarks/unknown_fewshot.py simplecil|ranpac|fecam [--out /tmp/unknown-fewshot]

Trains LEARNER on 30 embedded shapes classes (B20-Inc10), exports it (the export calibrates the unknown threshold),
then on a copy of the bundle: the fraction of test images of the 30 trained classes accepted at the threshold
(``predict(unknown="auto")``), and the same for 10 never-taught classes each added on the device from 5 images
(their other 20 test images). Prints the numbers; the figures in docs/unknown.md came from this script
(before the few-shot correction: ``noise_ratio`` set to null in the manifest).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def main() -> None:
    from edgecl.data import make_shapes
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run
    from edgecl_runtime import Bundle

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("learner")
    p.add_argument("--out", type=Path, default=Path("/tmp/unknown-fewshot"))
    args = p.parse_args()
    run, bundle, copy = (args.out / f"{k}-{args.learner}" for k in ("run", "bundle", "device"))
    run_experiment(RunConfig(dataset="shapes:30", learner=args.learner, init_cls=20, increment=10), out_dir=run,
                   log=lambda s: None)
    export_run(run, bundle, overwrite=True)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    b = Bundle.load(copy)
    train, test = make_shapes(40, 20, 20, seed=0)
    known = np.isin(np.array(test.class_names)[test.labels], b.classes)
    trained = 1 - b.predict(test.images[known], unknown="auto").unknown.mean()
    rates = []
    for name in [n for n in test.class_names if n not in b.classes][:10]:
        c = test.class_names.index(name)
        b.add_class(name, train.images[train.labels == c][:5])
        rates.append(1 - b.predict(test.images[test.labels == c], unknown="auto").unknown.mean())
    print(json.dumps({"learner": args.learner, "unknown": b.manifest["unknown"]["score"],
                      "noise_ratio": b.manifest["unknown"].get("noise_ratio"), "trained_accepted": float(trained),
                      "device_classes_accepted": float(np.mean(rates)), "per_device_class": [float(r) for r in rates]}))


if __name__ == "__main__":
    main()
