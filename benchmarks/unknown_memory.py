"""Would a bigger per-class state make "unknown" better? Scores on frozen features, one class order (issue 30).

    python benchmarks/unknown_memory.py [--dataset emoji:500:within:64] [--backbone mobilenetv2-imagenet@64]
                                        [--base 250] [--seed 1993]

Embeds the data set once (the edgecl embedding cache), takes the first ``--base`` classes of the class order as
known and the rest as unknown, and scores the test images with states of growing size: the class mean
(nearest-prototype cosine, what bundles use), a tied-covariance Mahalanobis distance (Lee et al. 2018), ``m``
k-means sub-prototypes per class, and the nearest training image (KNN-OOD, Sun et al. 2022) with all or some
of the training images kept. Writes ``benchmarks/results/unknown-memory.{json,md}`` with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kmeans(x: np.ndarray, m: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """``m`` unit centres of unit rows ``x`` (spherical k-means)."""
    c = x[np.random.default_rng(seed).choice(len(x), min(m, len(x)), replace=False)]
    for _ in range(iters):
        a = np.argmax(x @ l2n(c).T, axis=1)
        c = np.stack([x[a == j].mean(0) if np.any(a == j) else c[j] for j in range(len(c))])
    return l2n(c)


def scores(X: np.ndarray, y: np.ndarray, T: np.ndarray, k: int) -> dict[str, tuple[np.ndarray, int]]:
    """Unknown scores of test rows ``T`` from training rows ``X`` (labels ``y`` in 0..k-1), with the floats kept."""
    Xn, Tn = l2n(X), l2n(T)
    mu = np.stack([X[y == c].mean(0) for c in range(k)])
    out = {"class mean (nearest_cosine)": (1 - (Tn @ l2n(mu).T).max(1), mu.size)}
    mun = np.stack([Xn[y == c].mean(0) for c in range(k)])
    R = Xn - mun[y]
    S = R.T @ R / len(R)
    P = np.linalg.inv(S + 1e-2 * np.trace(S) / S.shape[0] * np.eye(S.shape[0]))
    TP = Tn @ P
    d = (TP * Tn).sum(1)[:, None] - 2 * TP @ mun.T + ((mun @ P) * mun).sum(1)[None]
    out["tied-covariance Mahalanobis"] = (d.min(1), mun.size + S.size)
    for m in (2, 4, 8):
        subs = np.concatenate([kmeans(Xn[y == c], m) for c in range(k)])
        out[f"{m} sub-prototypes per class"] = (1 - (Tn @ subs.T).max(1), subs.size)
    for keep in (5, 10, None):
        idx = np.concatenate([np.nonzero(y == c)[0][:keep] for c in range(k)])
        label = f"nearest training image ({keep} per class)" if keep else "nearest training image (all)"
        out[label] = (1 - (Tn @ Xn[idx].T).max(1), Xn[idx].size)
    return out


def main(argv: list[str] | None = None) -> int:
    from edgecl.experiment import RunConfig, _load_data, make_features
    from edgecl.grid import machine_info, parse_backbones
    from edgecl.protocol import ClassIncremental
    from edgecl.zoo import create_backbone
    from edgecl_runtime import unknown

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="emoji:500:within:64")
    p.add_argument("--backbone", default="mobilenetv2-imagenet@64")
    p.add_argument("--base", type=int, default=250, help="known classes: the first BASE of the class order")
    p.add_argument("--seed", type=int, default=1993, help="class-order seed")
    p.add_argument("--name", default="unknown-memory")
    args = p.parse_args(argv)
    bb_choice = parse_backbones(args.backbone, None, {})[0]
    cfg = RunConfig(dataset=args.dataset, backbone=bb_choice.name, img_size=bb_choice.img_size)
    bb = create_backbone(cfg.backbone, None, cfg.img_size)
    train, test = _load_data(cfg, bb.spec.input_size[1:])
    sc = ClassIncremental(train.num_classes, args.base, 10, seed=args.seed)
    train, test = sc.remap(train), sc.remap(test)
    fx = make_features(cfg, bb.spec)
    X, T = (fx.embed(bb, ds).numpy().astype(np.float64) for ds in (train, test))
    known_tr, known = train.labels < args.base, test.labels < args.base
    rows = []
    for name, (s, floats) in scores(X[known_tr], train.labels[known_tr], T, args.base).items():
        rows.append({"state": name, "floats": int(floats), "auroc": unknown.auroc(s[known], s[~known]),
                     "fpr95": unknown.fpr_at_tpr(s[known], s[~known])})
        print(rows[-1], flush=True)
    command = shlex.join(["python", "benchmarks/unknown_memory.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "machine": machine_info(1), "dataset": args.dataset, "backbone": args.backbone,
              "known_classes": args.base, "unknown_classes": int(train.num_classes - args.base),
              "order_seed": args.seed, "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Unknown scores vs the state they keep ({args.dataset}, {args.backbone})", "",
             f"Known: the first {args.base} classes of class order {args.seed}; unknown: the other "
             f"{report['unknown_classes']}. Test images. Floats: the state's size.", "", f"Command: `{command}`", "",
             "| state | floats | AUROC % | FPR@95 % |", "|---|---|---|---|"]
    lines += [f"| {r['state']} | {r['floats']:,} | {100 * r['auroc']:.1f} | {100 * r['fpr95']:.1f} |" for r in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
