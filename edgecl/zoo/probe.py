"""How useful is a frozen backbone? Nearest-class-mean and linear-probe accuracy on a data set.

* ``ncm``: cosine similarity to class-mean embeddings, all classes at once (what
  SimpleCIL's last accuracy is, without the incremental order);
* ``ridge``: a closed-form ridge-regression classifier (one-hot targets) on standardised
  embeddings plus a bias, ``lam`` relative to the number of training samples.

Both are deterministic and take seconds, so pre-training recipes can be compared on
held-out benchmark classes (e.g. ``glyphs:200:cross``)::

    python -m edgecl.zoo.probe --dataset glyphs:200:cross edgecl-vit-tiny edgecl-resnet10t

:func:`rank_backbones` ranks backbones on the user's own data (``edgecl backbones --probe DATA``):
every available image backbone (:func:`probe_candidates`; the ImageNet CNNs at ``PROBE_SIZES``) on at
most ``per_class`` images per class of each split, ranked by the mean of the NCM and ridge accuracy;
the recommendation is the fastest row within ``TOLERANCE`` points of the best.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from ..backbones import Backbone, BackboneSpec
from ..data import ArrayDataset, BatchLoader, load_dataset
from ..pretrain.trainer import build_model, deterministic
from . import SOURCES, create_backbone
from .clip import CLIP_MODELS, weights_status as clip_status
from .defaults import is_image_folder
from .embedded import EMBEDDED, weights_status
from .pretrained import NAMED

PROBE_SIZES = (112, 224)  # input sizes tried for the ImageNet CNNs (their resolution is free)
PROBE_PER_CLASS = 10  # images per class of each split, by default (a 20-class folder: ~1 min on 2 cores)
TOLERANCE = 1.0  # accuracy points: the recommendation is the fastest row this close to the best
AVAILABLE = ("installed", "committed", "cached")  # weights status of a backbone that is ready to run


@torch.no_grad()
def embed(backbone, dataset, batch_size: int = 256) -> np.ndarray:
    """Embeddings ``(N, D)`` float64 of a ``Backbone`` on an ``ArrayDataset`` (preprocessed to its input)."""
    spec = backbone.spec
    loader = BatchLoader(dataset, spec.input_size, spec.mean, spec.std, batch_size=batch_size)
    backbone.eval()
    return torch.cat([backbone(x) for x, _ in loader]).double().numpy()


def ncm_accuracy(f_train, y_train, f_test, y_test) -> float:
    classes = np.unique(y_train)
    protos = np.stack([f_train[y_train == c].mean(0) for c in classes])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True) + 1e-12
    f = f_test / (np.linalg.norm(f_test, axis=1, keepdims=True) + 1e-12)
    return float((classes[(f @ protos.T).argmax(1)] == y_test).mean())


def ridge_accuracy(f_train, y_train, f_test, y_test, lam: float = 1e-2) -> float:
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = np.hstack([(f_train - mu) / sd, np.ones((len(f_train), 1))])
    b = np.hstack([(f_test - mu) / sd, np.ones((len(f_test), 1))])
    classes, idx = np.unique(y_train, return_inverse=True)
    targets = np.eye(len(classes))[idx]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ targets)
    return float((classes[(b @ w).argmax(1)] == y_test).mean())


def probe(backbone, train, test) -> dict[str, float]:
    """``{"ncm": ..., "ridge": ...}`` top-1 on ``test`` from features of ``train``."""
    f_train, f_test = embed(backbone, train), embed(backbone, test)
    return {
        "ncm": ncm_accuracy(f_train, train.labels, f_test, test.labels),
        "ridge": ridge_accuracy(f_train, train.labels, f_test, test.labels),
    }


def random_embedded(name: str, seed: int = 0):
    """Embedded backbone ``name``'s architecture, randomly initialised (the baseline of pre-training)."""
    recipe = EMBEDDED[name]
    with deterministic(seed):
        model = build_model(recipe).eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(1, *recipe.input_size)).shape[-1])
    spec = BackboneSpec(name=f"random:{name}", timm_name=recipe.timm_name, model_kwargs=dict(recipe.model_kwargs),
                        input_size=recipe.input_size, mean=recipe.mean, std=recipe.std, embedding_dim=dim,
                        weights=f"random:{seed}")
    return Backbone(model, spec)


@dataclass(frozen=True)
class ProbeRow:
    """One backbone at one input size on the probe's data: accuracies in %, time to embed both splits."""

    backbone: str
    img_size: int
    fixed_size: bool  # embedded and CLIP backbones run at their own size only
    embedding_dim: int
    ncm: float
    ridge: float
    seconds: float
    ms_per_image: float

    @property
    def score(self) -> float:
        return (self.ncm + self.ridge) / 2

    def flags(self) -> str:
        """The ``edgecl train`` options that pick this row."""
        return f"--backbone {self.backbone}" + ("" if self.fixed_size else f" --img-size {self.img_size}")


@dataclass
class Ranking:
    """``rank_backbones``' answer: the rows best first, the backbones skipped and why, the recommendation."""

    dataset: str
    classes: int
    train_images: int
    test_images: int
    per_class: int
    rows: list[ProbeRow]
    skipped: list[dict] = field(default_factory=list)

    @property
    def best(self) -> ProbeRow | None:
        """The fastest row within ``TOLERANCE`` points of the best score."""
        if not self.rows:
            return None
        top = max(r.score for r in self.rows)
        return min((r for r in self.rows if r.score >= top - TOLERANCE), key=lambda r: r.seconds)

    def to_dict(self) -> dict:
        best = self.best
        rows = [asdict(r) | {"score": r.score} for r in self.rows]
        recommendation = None if best is None else {"backbone": best.backbone, "img_size": best.img_size,
                                                    "flags": best.flags()}
        return {"dataset": self.dataset, "classes": self.classes, "train_images": self.train_images,
                "test_images": self.test_images, "per_class": self.per_class, "rows": rows,
                "skipped": self.skipped, "recommendation": recommendation}


def _status(name: str) -> str:
    """Whether backbone ``name``'s weights are ready here (``AVAILABLE``) or what else."""
    if name in NAMED:
        return NAMED[name].status()
    return clip_status(name) if name in CLIP_MODELS else weights_status(name)


def _input_size(name: str, img_size: int | None) -> int:
    """The side in px that ``name`` runs at: ``img_size``, else its own (a timm name without one: 224)."""
    if img_size:
        return img_size
    if name in CLIP_MODELS:
        return CLIP_MODELS[name][0].input_size[1]
    return SOURCES[name].input_size[1] if name in SOURCES else 224


def expand_candidates(names, sizes=PROBE_SIZES) -> list[tuple[str, int | None]]:
    """``(name, img_size)`` pairs: ``NAME@SIZE`` at that size, a resizable named backbone at each of ``sizes``,
    any other at its own size (``None``)."""
    out = []
    for item in names:
        name, _, size = item.partition("@")
        if size:
            out.append((name, int(size)))
        elif name in SOURCES and not SOURCES[name].fixed_size:
            out += [(name, s) for s in sizes]
        else:
            out.append((name, None))
    return out


def probe_candidates(sizes=PROBE_SIZES, clip: bool = False) -> tuple[list[tuple[str, int | None]], list[dict]]:
    """``(candidates, skipped)``: ``(name, img_size)`` of every image backbone whose weights are ready (the
    resizable ones at each of ``sizes``; CLIP towers only with ``clip``), and ``{backbone, reason}`` of the rest."""
    names = [*EMBEDDED, *NAMED, *(CLIP_MODELS if clip else ())]
    ready = [name for name in names if _status(name) in AVAILABLE]
    skipped = [{"backbone": name, "reason": f"weights {_status(name)}", "hint": _hint(name)}
               for name in names if name not in ready]
    return expand_candidates(ready, sizes), skipped


def _hint(name: str) -> str:
    """How to include backbone ``name`` whose weights are not ready."""
    if name in NAMED:
        return NAMED[name].install
    return f"give --backbone {name} to include it; it is pre-trained first, a minute or more"


def cap_per_class(ds: ArrayDataset, n: int, seed: int = 0) -> ArrayDataset:
    """At most ``n`` images of each class of ``ds`` (a seeded draw), read into memory."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(ds.labels == c))[:n] for c in range(ds.num_classes)]
    idx = np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
    return ArrayDataset(np.asarray(ds.images[idx]), ds.labels[idx], ds.class_names)


def load_probe_data(dataset: str, per_class: int, image_size: int, seed: int = 0):
    """``(train, test)`` of ``dataset`` capped at ``per_class`` images per class; an image folder is read lazily
    (``stream:``) so that only the images kept are decoded."""
    source = f"stream:{dataset}" if is_image_folder(dataset) else dataset
    train, test = load_dataset(source, image_size=(image_size, image_size), seed=seed)
    return cap_per_class(train, per_class, seed), cap_per_class(test, per_class, seed + 1)


def probe_row(name: str, img_size: int | None, train, test) -> ProbeRow:
    """``name`` at ``img_size`` probed on ``train``/``test``; the time is that of embedding both splits."""
    backbone = create_backbone(name, img_size=img_size)
    embed(backbone, ArrayDataset(train.images[:8], train.labels[:8], train.class_names))  # warm-up, not timed
    start = time.perf_counter()
    f_train, f_test = embed(backbone, train), embed(backbone, test)
    seconds = time.perf_counter() - start
    ncm = ncm_accuracy(f_train, train.labels, f_test, test.labels)
    ridge = ridge_accuracy(f_train, train.labels, f_test, test.labels)
    return ProbeRow(name, backbone.spec.input_size[1], img_size is None, backbone.embedding_dim, 100 * ncm,
                    100 * ridge, seconds, 1000 * seconds / max(1, len(train) + len(test)))


def rank_backbones(dataset: str, candidates=None, per_class: int = PROBE_PER_CLASS, seed: int = 0,
                   log: Callable[[str], None] = print) -> Ranking:
    """Probe ``candidates`` (``(name, img_size)``; default ``probe_candidates()``) on ``dataset``, best first."""
    skipped = []
    if candidates is None:
        candidates, skipped = probe_candidates()
    largest = max((_input_size(name, size) for name, size in candidates), default=PROBE_SIZES[-1])
    train, test = load_probe_data(dataset, per_class, largest, seed)  # each backbone resizes to its own size
    log(f"{dataset}: {len(train)} train / {len(test)} test images, {train.num_classes} classes "
        f"(at most {per_class} per class)")
    rows = []
    for name, size in candidates:
        log(f"probing {name}" + (f" at {size} px" if size else ""))
        rows.append(probe_row(name, size, train, test))
    rows.sort(key=lambda r: (-r.score, r.seconds))
    return Ranking(dataset, train.num_classes, len(train), len(test), per_class, rows, skipped)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbones", nargs="+",
                    help="backbone names (NAME@IMG_SIZE to change the input size); NAME=WEIGHTS for a timm model "
                         "with a file; random:EMBEDDED_NAME for a random init of an embedded architecture")
    ap.add_argument("--dataset", default="glyphs:200:cross")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_dataset(args.dataset)
    print(f"{args.dataset}: {len(train)} train / {len(test)} test images, {train.num_classes} classes")
    for item in args.backbones:
        name, _, weights = item.partition("=")
        name, _, size = name.partition("@")  # NAME@IMG_SIZE
        if name.startswith("random:"):
            bb = random_embedded(name.split(":", 1)[1])
        else:
            bb = create_backbone(name, weights=weights or None, img_size=int(size) if size else None)
        res = probe(bb, train, test)
        print(f"{item:40s} dim {bb.embedding_dim:4d}  ncm {res['ncm']:.4f}  ridge {res['ridge']:.4f}", flush=True)


if __name__ == "__main__":
    main()
