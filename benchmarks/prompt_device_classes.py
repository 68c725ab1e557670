"""Classes added on the device to prompt bundles vs classes trained with prompts.

    python benchmarks/prompt_device_classes.py [--dataset shapes] [--trained 50] [--added 10]
        [--shots 5] [--learners l2p,dualprompt,coda_prompt,simplecil] [--epochs 3]
        [--backbone NAME --weights W --img-size S] [--seed 1993]

Per learner: train on ``--trained`` classes (B10-Inc10 over a seeded class
order; prompt learners with ``head=prototype``), export, then add ``--added``
held-out classes on the device with the runtime (``Bundle.add_class``, prompt
pool frozen, ``--shots`` training images each) and classify the test images of
all classes. Reports top-1 over all classes, split into test images of
trained classes and of device-added classes. SimpleCIL (no prompts) is the
reference for what prototypes on frozen features give. JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def subset_npz(train, test, classes: list[int], path: Path) -> None:
    """The classes ``classes`` (in this order) of ``train``/``test`` as an .npz data source."""
    names = [train.class_names[c] for c in classes]
    remap = {c: i for i, c in enumerate(classes)}

    def part(ds):
        keep = np.isin(ds.labels, classes)
        return ds.images[keep], np.array([remap[int(y)] for y in ds.labels[keep]], dtype=np.int64)

    (xtr, ytr), (xte, yte) = part(train), part(test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(names))


def parse_args() -> argparse.Namespace:
    from bench_two_pass import default_backbone

    name, weights, size = default_backbone()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--trained", type=int, default=50)
    ap.add_argument("--added", type=int, default=10)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--learners", default="l2p,dualprompt,coda_prompt,simplecil")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--increment", type=int, default=10)
    ap.add_argument("--backbone", default=name)
    ap.add_argument("--weights", default=weights)
    ap.add_argument("--img-size", type=int, default=size)
    ap.add_argument("--seed", type=int, default=1993)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "prompt_device_classes.json")
    return ap.parse_args()


def measure_learner(learner: str, args, tmp: Path, train, test, trained: list, added: list) -> dict:
    """Train ``learner`` on the trained classes, export, add the other classes on the device, score both groups."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run
    from edgecl_runtime import Bundle

    hp = {} if learner == "simplecil" else {"head": "prototype", "epochs": args.epochs}
    cfg = RunConfig(
        dataset=str(tmp / "trained.npz"), backbone=args.backbone, weights=args.weights, img_size=args.img_size,
        learner=learner, learner_args=hp, init_cls=args.increment, increment=args.increment, order_seed=args.seed,
    )
    t0 = time.perf_counter()
    result = run_experiment(cfg, out_dir=tmp / learner, log=lambda s, n=learner: print(f"  {n}: {s}", flush=True))
    train_s = time.perf_counter() - t0
    b = Bundle.load(export_run(tmp / learner, tmp / f"{learner}-bundle").path, device="cpu")
    add_ms = [1e3 * b.add_class(train.class_names[c], train.images[train.labels == c][: args.shots]).seconds
              for c in added]
    keep = np.isin(test.labels, trained + added)
    truth = np.array(test.class_names)[test.labels[keep]]
    pred = np.array(b.predict(test.images[keep]).labels)
    is_added = np.isin(truth, [train.class_names[c] for c in added])
    assert set(truth) <= set(b.classes)
    return {
        "learner": learner,
        "hparams": result.learner.hparams,
        "top1_all": round(100 * float(np.mean(pred == truth)), 2),
        "top1_trained_classes": round(100 * float(np.mean(pred[~is_added] == truth[~is_added])), 2),
        "top1_device_added_classes": round(100 * float(np.mean(pred[is_added] == truth[is_added])), 2),
        "protocol_last_top1_before_adding": round(result.metrics.last, 2),
        "train_seconds": round(train_s, 1),
        "add_class_ms_median": round(float(np.median(add_ms)), 2),
    }


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_two_pass import cpu_name

    args = parse_args()

    import torch

    from edgecl.data import load_dataset
    from edgecl.zoo import create_backbone

    torch.set_num_threads(args.threads)
    spec = create_backbone(args.backbone, args.weights, args.img_size).spec
    train, test = load_dataset(args.dataset, image_size=spec.input_size[1:])
    order = np.random.default_rng(args.seed).permutation(train.num_classes).tolist()
    if args.trained + args.added > len(order):
        raise SystemExit(f"{args.dataset} has {len(order)} classes, fewer than {args.trained} + {args.added}")
    trained, added = order[: args.trained], order[args.trained : args.trained + args.added]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset_npz(train, test, trained, tmp / "trained.npz")
        for learner in args.learners.split(","):
            rows.append(measure_learner(learner, args, tmp, train, test, trained, added))
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
                    "torch_threads": args.threads},
        "backbone": {"name": spec.name, "weights": spec.weights},
        "dataset": args.dataset,
        "trained_classes": len(trained),
        "device_added_classes": len(added),
        "shots_per_added_class": args.shots,
        "chance_top1": round(100 / (len(trained) + len(added)), 2),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
