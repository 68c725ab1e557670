"""PromptFusion (Chen et al.): two backbones in one graph, scored ``lam * f_A + (1 - lam) * f_B``.

The paper: "PromptFusion: Decoupling Stability and Plasticity for Continual
Learning"; this is its two-expert fusion with image backbones.

Two learners score every image and the fusion is their mixture

    s(x) = lam * f_A(x) + (1 - lam) * f_B(x)

* A, the *booster* (plasticity): the learner's ViT with VPT prompts, trained on
  the first task with a temporary head and then frozen (as ``vpt``);
  ``f_A`` is the cosine of the prompted embedding to each class's prototype.
* B, the *stabiliser*: a second, frozen backbone (hparam ``second``, a named
  backbone such as ``edgecl-resnet10t`` or ``mobilenetv2-imagenet``, or a
  timm name with ``second_weights``); ``f_B`` is the cosine to the class's
  prototype of B's embedding.

``lam`` is chosen on every task by validation: ``val_fraction`` of each new
class's training images is held out, the new classes' prototypes are taken
from the rest, and the ``lam`` of the grid ``0, 0.05 .. 1`` with the best
accuracy on the held-out images (against all classes so far; ties: the value
nearest 0.5) is kept; then the prototypes are taken from all images.

Export: one graph holds both backbones. The images enter the ViT as
preprocessed for it and B after an in-graph re-normalisation (and resize, if B
takes another size); the features are ``[A's embedding, B's embedding]``, each
zero-padded to the larger width (padding leaves cosines unchanged), and the
head is the runtime's ``subspace_cosine`` with two blocks and every class's
weights ``(lam, 1 - lam)``: its score *is* the mixture above. A class added on
the device gets both prototypes from the same images (one running mean over
the concatenation) and the same weights.

Departures from the paper (docs/mixtures.md): the paper's stabiliser is CLIP
with CoOp prompts and its booster a VPT-ViT with a linear classifier, both
trained on every task, and ``lam`` is learned; here both experts score by
prototypes (so the device can add classes), the booster's prompts train on
the first task only (later tasks would move the embedding under the stored
prototypes), the stabiliser is a frozen image backbone, and ``lam`` is
validated.

Hyper-parameters: ``second`` (edgecl-resnet10t), ``second_weights`` (timm
models only: a weights file or ``random``), ``lam`` (-1: validated; a value
in [0, 1] fixes it), ``val_fraction`` (0.2), ``deep`` (false) and
``prompt_length`` (5) of the VPT, ``epochs`` (5), ``lr`` (1e-2),
``weight_decay``, ``head`` (the temporary training head), ``seed`` (0).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.prototype import PrototypeCosineHead
from edgecl_runtime.heads.subspace import SubspaceCosineHead

from ..backbones import Backbone, BackboneSpec, backbone_from_state
from ..errors import ConfigError, StateError
from ..peft import PeftModel
from .aper import PEFT_PREFIX, TRAIN_DEFAULTS
from .hparams import require
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import HEAD_TYPES, adapt_first_session, task_labels

LAMBDA_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
SECOND_PREFIX = "second."


class FusionEmbedding(nn.Module):
    """Images (preprocessed for A) -> ``[pad(A(x)), pad(B(x'))]``, ``x'`` re-normalised (and resized) for B."""

    def __init__(self, a: nn.Module, a_dim: int, a_spec, b: nn.Module, b_dim: int, b_spec):
        super().__init__()
        self.a, self.b, self.a_dim, self.b_dim = a, b, a_dim, b_dim
        self.block = max(a_dim, b_dim)
        mean_a, std_a = torch.tensor(a_spec.mean), torch.tensor(a_spec.std)
        mean_b, std_b = torch.tensor(b_spec.mean), torch.tensor(b_spec.std)
        self.register_buffer("scale", (std_a / std_b).reshape(1, 3, 1, 1).float())
        self.register_buffer("shift", ((mean_a - mean_b) / std_b).reshape(1, 3, 1, 1).float())
        self.b_size = tuple(b_spec.input_size[1:])
        self.resize = tuple(a_spec.input_size[1:]) != self.b_size
        self.identity = bool(torch.equal(mean_a, mean_b) and torch.equal(std_a, std_b))

    def train(self, mode: bool = True) -> "FusionEmbedding":
        return super().train(False)  # frozen backbones keep their eval-mode behaviour

    def for_b(self, x: torch.Tensor) -> torch.Tensor:
        """A's preprocessed images as B's: ``(x * std_A + mean_A - mean_B) / std_B``, resized if B's size differs."""
        if not self.identity:
            x = x * self.scale + self.shift
        if self.resize:
            x = F.interpolate(x, size=self.b_size, mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fa = F.pad(self.a(x), (0, self.block - self.a_dim))
        fb = F.pad(self.b(self.for_b(x)), (0, self.block - self.b_dim))
        return torch.cat([fa, fb], dim=1)


def choose_lambda(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> float:
    """The ``LAMBDA_GRID`` value whose mixture ``lam * a + (1 - lam) * b`` classifies ``labels`` best
    (ties: the one nearest 0.5)."""
    acc = np.array([np.mean((lam * scores_a + (1 - lam) * scores_b).argmax(1) == labels) for lam in LAMBDA_GRID])
    best = np.flatnonzero(acc == acc.max())
    return float(LAMBDA_GRID[best[np.argmin(np.abs(np.asarray(LAMBDA_GRID)[best] - 0.5))]])


@register_learner
class PromptFusion(PrototypeLearner):
    name = "promptfusion"
    head_class = SubspaceCosineHead
    defaults: ClassVar[dict[str, Any]] = {
        "second": "edgecl-resnet10t", "second_weights": "", "lam": -1.0, "val_fraction": 0.2,
        "deep": False, "prompt_length": 5, **TRAIN_DEFAULTS, "lr": 1e-2,
    }  # fmt: skip
    choices = {"head": HEAD_TYPES}
    positive = ("epochs", "lr", "prompt_length")
    hparam_help: ClassVar[dict[str, str]] = {
        "second": "the stabiliser: a second, frozen backbone (named, or a timm name with second_weights)",
        "second_weights": "weights of a timm second backbone: a local file or 'random' (named backbones: empty)",
        "lam": "weight of the prompted ViT's scores in the mixture; -1: chosen by validation on every task",
        "val_fraction": "share of each new class's images held out to choose lam",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        lam = hp["lam"]
        require(self.name, lam == -1.0 or 0.0 <= lam <= 1.0, f"lam must be -1 or in [0, 1], got {lam}")
        require(self.name, 0.0 < hp["val_fraction"] < 1.0, f"val_fraction must be in (0, 1), got {hp['val_fraction']}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        hp = self.hparams
        method = "vpt_deep" if hp["deep"] else "vpt_shallow"
        self.peft = PeftModel(self.backbone.model, method, prompt_length=hp["prompt_length"], seed=hp["seed"])
        self.peft.to(device)
        self.adapted = False
        self.lam = 0.5 if hp["lam"] == -1.0 else hp["lam"]
        self.lambdas: list[float] = []  # the validated value of every task
        self._second: Backbone | None = None  # built on first use, or restored from a saved state
        self._embedding: FusionEmbedding | None = None

    @property
    def second(self) -> Backbone:
        """The stabiliser's frozen backbone (hparam ``second``), built on first use."""
        if self._second is None:
            self._set_second(self._build_second())
        return self._second

    def _build_second(self) -> Backbone:
        if self.backbone_factory is None:
            raise ConfigError("promptfusion builds its second backbone by name: create it with "
                              "create_learner(..., backbones=edgecl.zoo.create_backbone)")
        hp = self.hparams
        return self.backbone_factory(hp["second"], hp["second_weights"] or None, seed=hp["seed"])

    def _set_second(self, second: Backbone) -> None:
        self._second = second.to(self.device)
        second.model.requires_grad_(False).eval()
        self._embedding = FusionEmbedding(self.peft, self.backbone.embedding_dim, self.backbone.spec,
                                          second.model, second.embedding_dim, second.spec)

    @property
    def embedding_dim(self) -> int:
        return 2 * max(self.backbone.embedding_dim, self.second.embedding_dim)

    def embedding_module(self) -> nn.Module:
        if self._embedding is None:
            self._set_second(self._build_second())
        return self._embedding

    @property
    def embedding_frozen(self) -> bool:
        return self.adapted

    # ------------------------------------------------------------ training
    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes)
        hp = self.hparams
        if not self.adapted:
            self.train_stats = adapt_first_session(self.peft, loader, classes, self.backbone.embedding_dim,
                                                   hp, self.device, progress)
            self.adapted = True
        feats, labels = self.embed(loader)
        if hp["lam"] == -1.0:
            self.lam = self.validate_lambda(feats, labels)
            self.lambdas.append(self.lam)
        self.add_examples(feats, labels)

    def holdout(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the held-out images: ``val_fraction`` of each class (at least one, never all)."""
        rng = np.random.default_rng(self.hparams["seed"] + self.num_classes)
        mask = np.zeros(len(labels), bool)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if len(idx) > 1:
                k = min(len(idx) - 1, max(1, round(self.hparams["val_fraction"] * len(idx))))
                mask[rng.choice(idx, k, replace=False)] = True
        return mask

    def validate_lambda(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        """``lam`` chosen on held-out images of this task's classes (see module doc); the head is left as it was."""
        f, y = feats.numpy(), labels.numpy()
        val = self.holdout(y)
        if not val.any():
            return self.lam
        head, n = self.head, self.num_classes
        try:
            self.add_examples(feats[~val], labels[~val])
            protos = self.head.prototypes
        finally:
            self.head, self.num_classes = head, n
        d = self.embedding_module().block
        a = PrototypeCosineHead(protos[:, :d], np.ones(len(protos), np.int64)).scores(f[val, :d])
        b = PrototypeCosineHead(protos[:, d:], np.ones(len(protos), np.int64)).scores(f[val, d:])
        return choose_lambda(a, b, y[val])

    # ----------------------------------------------------------- inference
    def _weights(self, rows: int) -> np.ndarray:
        return np.tile(np.array([self.lam, 1.0 - self.lam], np.float32), (rows, 1))

    @torch.no_grad()
    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        _, arrays = self.export_head()
        return torch.from_numpy(SubspaceCosineHead(**arrays).scores(feats.numpy()))

    def export_head(self) -> tuple[str, dict[str, np.ndarray]]:
        if self.head is None:
            return super().export_head()
        protos, counts = self.head.prototypes, self.head.counts
        w = self._weights(len(counts) + 1)
        arrays = {"prototypes": protos, "counts": counts, "weights": w[:-1].copy(), "new_class_weights": w[-1].copy()}
        return self.head_kind, arrays

    # --------------------------------------------------------------- state
    def extra_state(self) -> dict[str, np.ndarray]:
        """The VPT prompts, ``lam``, and the second backbone itself (spec and weights: a run stays self-contained)."""
        peft = {PEFT_PREFIX + k: v.numpy() for k, v in self.peft.peft_state().items()}
        second = {SECOND_PREFIX + k: v.detach().cpu().numpy() for k, v in self.second.model.state_dict().items()}
        return {"adapted": np.array(self.adapted), "lam": np.array(self.lam), "lambdas": np.asarray(self.lambdas),
                "second_spec": np.array(json.dumps(self.second.spec.to_dict())), **peft, **second}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        if "second_spec" not in state:
            raise StateError("promptfusion state has no second backbone")
        spec = BackboneSpec.from_dict(json.loads(str(state["second_spec"])))
        n = len(SECOND_PREFIX)
        weights = {k[n:]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith(SECOND_PREFIX)}
        self._set_second(backbone_from_state(spec, weights))
        self.peft.load_peft_state({k[len(PEFT_PREFIX) :]: v for k, v in state.items() if k.startswith(PEFT_PREFIX)})
        self.adapted = bool(state.get("adapted", True))
        if self.adapted:
            self.peft.freeze()
        self.lam = float(state["lam"])
        self.lambdas = [float(v) for v in np.asarray(state.get("lambdas", []))]

    def _load_head(self, state: dict[str, np.ndarray]) -> None:
        """The saved state holds the prototypes and counts (and ``lam``); the weights follow from ``lam``."""
        w = self._weights(int(np.asarray(state["counts"]).shape[0]) + 1)
        super()._load_head({**state, "weights": w[:-1], "new_class_weights": w[-1]})
        self.head = PrototypeCosineHead(self.head.prototypes, self.head.counts)
