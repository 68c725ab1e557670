"""How useful is a frozen backbone? Nearest-class-mean and linear-probe accuracy on a data set.

* ``ncm``: cosine similarity to class-mean embeddings, all classes at once (what
  SimpleCIL's last accuracy is, without the incremental order);
* ``ridge``: a closed-form ridge-regression classifier (one-hot targets) on standardised
  embeddings plus a bias, ``lam`` relative to the number of training samples.

Both are deterministic and take seconds, so pre-training recipes can be compared on
held-out benchmark classes (e.g. ``glyphs:200:cross``)::

    python -m edgecl.zoo.probe --dataset glyphs:200:cross edgecl-vit-tiny edgecl-resnet10t
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..backbones import Backbone, BackboneSpec
from ..data import BatchLoader, load_dataset
from ..pretrain.trainer import build_model, deterministic
from . import create_backbone
from .embedded import EMBEDDED


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
