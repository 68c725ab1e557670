"""EASE: how the subspaces are scored, side by side on one trained learner.

    python benchmarks/ease_scoring.py [--protocol B50%-Inc10] [--dataset glyphs:200:within:96]
                                      [--backbone edgecl-vit-tiny] [--seed 1993] [--threads 1]
                                      [--use-init-ptm]

Trains EASE once (defaults) and, after every task, scores the same learner
four ways on the test images of the classes seen so far:

* ``plain``: cosine over the concatenation of all subspaces (``reweight=false``);
* ``alpha0.1``: the paper's re-weighting, own task's subspace 1, others
  ``alpha / (T - 1)`` with ``alpha = 0.1`` (the default);
* ``alpha0``: own task's subspace only;
* ``alpha1``: every subspace weighted 1 (per-subspace cosines summed).

With ``--use-init-ptm`` the learner also carries the pre-trained embedding as
a block (``use_init_ptm=true``; the adapters train the same), the four scorings
above weigh it ``beta = 0`` as the default does, and two more weigh it 1:

* ``alpha0.1_beta1``: the default re-weighting plus the pre-trained block;
* ``alpha0_beta1``: own task's subspace plus the pre-trained block.

Prints the curves and writes ``benchmarks/results/ease-scoring.json``
(``ease-scoring-ptm.json`` with ``--use-init-ptm``) with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "plain": {"reweight": False},
    "alpha0.1": {"reweight": True, "alpha": 0.1},
    "alpha0": {"reweight": True, "alpha": 0.0},
    "alpha1": {"reweight": True, "alpha": 1.0},
}
PTM_VARIANTS = {
    "alpha0.1_beta1": {"reweight": True, "alpha": 0.1, "beta": 1.0},
    "alpha0_beta1": {"reweight": True, "alpha": 0.0, "beta": 1.0},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="B50%-Inc10", help="B<base>[%%]-Inc<n>, as in cil_table.py")
    p.add_argument("--dataset", default="glyphs:200:within:96")
    p.add_argument("--backbone", default="edgecl-vit-tiny")
    p.add_argument("--seed", type=int, default=1993, help="class-order seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--use-init-ptm", action="store_true", help="carry the pre-trained block; add beta=1 scorings")
    p.add_argument("--out", type=Path, help="JSON file to write (default: benchmarks/results/ease-scoring[-ptm].json)")
    args = p.parse_args(argv)
    variants = dict(VARIANTS, **(PTM_VARIANTS if args.use_init_ptm else {}))

    import torch

    from edgecl.experiment import RunConfig, evaluate, run_experiment
    from edgecl.grid import Protocol, machine_info, num_classes

    torch.set_num_threads(args.threads)
    curves: dict[str, list[float]] = {k: [] for k in variants}

    def score_all(t, learner, test, seen):
        """Every scoring on the same learner, on the test images of the classes seen after task ``t``."""
        keep = dict(learner.hparams)
        try:
            for name, hp in variants.items():
                learner.hparams.update(hp)
                pred = evaluate(learner, test, learner.backbone.spec, indices=seen, features=learner.features)
                curves[name].append(round(float(np.mean(pred == test.labels[seen]) * 100), 2))
        finally:
            learner.hparams.clear()
            learner.hparams.update(keep)
        print({k: c[-1] for k, c in curves.items()}, flush=True)

    proto, defaults = Protocol.parse(args.protocol), RunConfig()
    classes = num_classes(args.dataset, defaults.data_seed, defaults.train_per_class, defaults.test_per_class)
    cfg = RunConfig(dataset=args.dataset, backbone=args.backbone, learner="ease", init_cls=proto.init_cls(classes),
                    increment=proto.increment, order_seed=args.seed,
                    learner_args={"use_init_ptm": True} if args.use_init_ptm else {})
    t0 = time.time()
    result = run_experiment(cfg, after_task=score_all)
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(args.threads),
        "protocol": args.protocol, "dataset": args.dataset, "backbone": args.backbone, "order_seed": args.seed,
        "use_init_ptm": args.use_init_ptm,
        "classes_seen": np.cumsum([len(t) for t in result.scenario.tasks]).tolist(),
        "accuracy_per_task": curves,
        "last": {k: c[-1] for k, c in curves.items()},
        "protocol_per_task": [round(a, 2) for a in result.metrics.overall],  # the learner's own (default) scoring
        "wall_time_s": round(time.time() - t0, 1),
    }  # fmt: skip
    out = args.out or RESULTS / ("ease-scoring-ptm.json" if args.use_init_ptm else "ease-scoring.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["last"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
