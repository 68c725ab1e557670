"""ZSCL (Zheng et al., ICCV 2023) on a CLIP: device adds classes by name (text tower) or from images.

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language Models".
The classifier is zero-shot: each class is the text prototype of its name (a ``prototype_cosine`` head,
count 1): the unit CLIP text embedding through the CLIP's prototype map (``edgecl.clip``), which is what
the bundle's text tower gives for a name on the device. Each task fine-tunes the image side of CLIP (its last
``blocks`` transformer blocks, final layer norm and projection; the text tower stays the pre-trained one,
so the device can embed new names with the very tower the classes were trained against) with

* cross-entropy of ``logit_scale * cos(image, text)`` over all classes seen so far,
* feature-space distillation towards the *initial* model on reference data: images the project renders
  of code points that are no benchmark class (``edgecl.data.glyphs.pretrain_corpus``) with their Unicode
  names as texts. Both models' image features are scored against the reference texts (embedded once by
  the initial text tower) and the current scores are pulled to the initial ones by soft cross-entropy at
  temperature ``temperature``, image-to-text and text-to-image (the reference code's image and text losses),
  weighted by ``distill``,
* weight-space ensembling (WE): every ``we_every`` optimizer steps the running mean of the tuned weights
  takes the current ones in (``we_update``: after ``n`` snapshots it is their plain mean); at the end of
  the task the model becomes that mean, which is what the next task starts from and what is exported.

The bundle is that single averaged image tower (unit features) and the text prototypes; on the device a
class is added from images (its prototype is their mean feature) or, since the bundle carries the CLIP
text tower (its features are the tuned CLIP image embeddings, its head ``prototype_cosine``), by name
(``Bundle.add_class(name, text=True)``: its prototype is the name's text prototype). ``distill=0`` / ``we_every=0`` turn the
two mechanisms off (plain fine-tuning of the last blocks).

Hyper-parameters: ``blocks`` (1), ``epochs`` (2), ``lr`` (1e-4), ``weight_decay`` (0.0), ``distill`` (1.0),
``temperature`` (2.0), ``we_every`` (5), ``ref_classes`` (100), ``ref_per_class`` (2), ``template``
(``"{}"``), ``seed`` (0).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.prototype import PrototypeCosineHead

from ..data.dataset import preprocess_rows
from ..errors import ConfigError, StateError
from ..loop import cosine_schedule, epochs, steps_per_epoch, train
from .hparams import require
from .prototypes import PrototypeLearner
from .registry import register_learner
from .training import task_labels
from .vlm import ImageTower, class_prototypes, class_text, clip_model, loader_class_names, reference_images

_TUNED = "tuned."


def we_update(average: dict[str, torch.Tensor], current: dict[str, torch.Tensor], n: int) -> None:
    """In place: ``average <- average * (n - 1) / n + current / n``, the running mean of ``n`` snapshots."""
    with torch.no_grad():
        for name, avg in average.items():
            avg.mul_((n - 1) / n).add_(current[name].detach(), alpha=1.0 / n)


def soft_cross_entropy(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * CE(softmax(teacher / T), student / T)`` averaged over rows (the reference code's ``distillation``)."""
    target = torch.softmax(teacher / temperature, dim=1)
    return F.cross_entropy(student / temperature, target) * temperature**2


_BLOCK = re.compile(r"^(.*\b(?:resblocks|blocks))\.(\d+)\.")
_OUTPUT = re.compile(r"(^|\.)(ln_post|norm|fc_norm|proj|head)(\.|$)")


def tuned_names(visual: nn.Module, blocks: int) -> list[str]:
    """Parameter names of the last ``blocks`` transformer blocks of a CLIP image tower and of what follows
    them (final norm, projection, head): open_clip's ``transformer.resblocks.N`` / ``ln_post`` / ``proj`` or a
    timm trunk's ``blocks.N`` / ``norm`` / ``head``."""
    names = [n for n, _ in visual.named_parameters()]
    depth = 1 + max((int(m.group(2)) for n in names if (m := _BLOCK.match(n))), default=-1)
    if depth == 0:
        raise ConfigError("zscl needs a transformer image tower (parameters under blocks.N or resblocks.N)")
    last = {str(i) for i in range(max(0, depth - blocks), depth)}
    return [n for n in names if ((m := _BLOCK.match(n)) and m.group(2) in last)
            or (not m and "patch_embed" not in n and _OUTPUT.search(n))]


@register_learner
class ZSCL(PrototypeLearner):
    name = "zscl"
    defaults = {"blocks": 1, "epochs": 2, "lr": 1e-4, "weight_decay": 0.0, "distill": 1.0, "temperature": 2.0,
                "we_every": 5, "ref_classes": 100, "ref_per_class": 2, "template": "{}", "seed": 0}
    positive = ("blocks", "epochs", "lr", "temperature", "ref_classes", "ref_per_class")
    hparam_help = {
        "blocks": "last transformer blocks of the CLIP image tower fine-tuned (with the final norm/projection)",
        "epochs": "fine-tuning epochs per task",
        "lr": "peak learning rate (AdamW, cosine decay)",
        "weight_decay": "AdamW weight decay",
        "distill": "weight of the distillation towards the initial model on reference data (0: off)",
        "temperature": "softmax temperature of the distillation",
        "we_every": "optimizer steps between weight-space-ensembling snapshots (0: off, keep the last weights)",
        "ref_classes": "reference classes: rendered code points that are no benchmark class, named by Unicode",
        "ref_per_class": "reference images per reference class",
        "template": "text of a class for the CLIP text tower, '{}' standing for its name",
        "seed": "seed of the reference-batch sampling",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, hp["distill"] >= 0 and hp["we_every"] >= 0 and hp["weight_decay"] >= 0,
                "distill, we_every and weight_decay must be >= 0")
        require(self.name, "{}" in hp["template"], f"template must contain '{{}}', got {hp['template']!r}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.clip = clip_model(backbone, self.name)
        self._tower = ImageTower(self.clip)
        visual = dict(self.clip.visual.named_parameters())
        self.tuned = {n: visual[n] for n in tuned_names(self.clip.visual, self.hp["blocks"])}
        self._initial = {n: p.detach().clone() for n, p in self.tuned.items()}
        self._reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.train_stats: dict[str, float] | None = None

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def embedding_module(self) -> nn.Module:
        return self._tower

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._tower(x), dim=-1)

    @property
    def embedding_frozen(self) -> bool:
        return False  # the image tower is fine-tuned every task

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes)
        total = int(classes.max()) + 1
        names = loader_class_names(loader, total, self.name)
        protos = class_prototypes(self.backbone, [class_text(n, self.hp["template"]) for n in names])
        self.train_stats = self._train(loader, F.normalize(protos, dim=-1).to(self.device), progress)
        head = self.head or PrototypeCosineHead(np.zeros((0, protos.shape[1]), np.float32), np.zeros(0, np.int64))
        for c in range(self.num_classes, total):
            head = head.with_examples(None, protos[c : c + 1].numpy())
        self.head, self.num_classes = head, head.num_classes

    def reference(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, initial model's unit image features, reference text features)`` of the reference data."""
        if self._reference is None:
            hp, spec = self.hp, self.backbone.spec
            images, texts = reference_images(hp["ref_classes"], hp["ref_per_class"], spec.input_size[1])
            x = torch.from_numpy(preprocess_rows(images, np.arange(len(images)), spec.input_size, spec.mean, spec.std))
            with torch.no_grad(), self.initial_weights():
                init = torch.cat([self._features(b.to(self.device)) for b in x.split(64)])
            ref_protos = F.normalize(class_prototypes(self.backbone, sorted(set(texts))), dim=-1)
            self._reference = (x, init, ref_protos.to(self.device))
        return self._reference

    def initial_weights(self):
        """A context in which the tuned parameters hold their initial (pre-trained) values."""
        learner = self

        class _Swap:
            def __enter__(self):
                self.saved = {n: p.detach().clone() for n, p in learner.tuned.items()}
                learner._assign(learner._initial)

            def __exit__(self, *exc):
                learner._assign(self.saved)

        return _Swap()

    def _assign(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.tuned.items():
                p.copy_(values[n])

    def drift(self) -> float:
        """Mean ``1 - cos`` between the current and the initial image features of the reference images."""
        x, init, _ = self.reference()
        with torch.no_grad():
            now = torch.cat([self._features(b.to(self.device)) for b in x.split(64)])
        return float((1 - (now * init).sum(1)).mean())

    def _train(self, loader, texts: torch.Tensor, progress) -> dict[str, float]:
        hp, params = self.hp, list(self.tuned.values())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        per_epoch = steps_per_epoch(loader)
        sched = cosine_schedule(opt, max(1, hp["epochs"] * per_epoch)) if per_epoch is not None else None
        scale = self.clip.logit_scale.detach().exp().float()
        ref = self.reference() if hp["distill"] > 0 else None
        average = {n: p.detach().clone() for n, p in self.tuned.items()}
        g = torch.Generator().manual_seed(hp["seed"] + self.num_classes)
        state = {"step": 0, "snapshots": 0, "loss": 0.0}

        def loss_fn(batch):
            x, y = batch[0].to(self.device), batch[1].to(self.device)
            loss = F.cross_entropy(scale * self._features(x) @ texts.T, y)
            if ref is not None:
                loss = loss + hp["distill"] * self._distillation(ref, len(y), scale, g)
            state["loss"] += float(loss.detach())
            return loss

        def on_step(_loss):
            state["step"] += 1
            if hp["we_every"] and (state["step"] - 1) % hp["we_every"] == 0:
                state["snapshots"] += 1
                we_update(average, self.tuned, state["snapshots"])

        try:
            train(epochs(loader, hp["epochs"], progress), loss_fn, opt, sched, on_step=on_step)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        if state["snapshots"]:
            self._assign(average)
        return {"loss": state["loss"] / max(state["step"], 1), "steps": state["step"], "snapshots": state["snapshots"]}

    def _distillation(self, ref, batch: int, scale: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x, init, texts = ref
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=g)
        current = scale * self._features(x[idx].to(self.device)) @ texts.T
        teacher = scale * init[idx] @ texts.T
        t = self.hp["temperature"]
        return soft_cross_entropy(teacher, current, t) + soft_cross_entropy(teacher.T, current.T, t)

    def extra_state(self) -> dict[str, np.ndarray]:
        return {_TUNED + n: p.detach().cpu().numpy().copy() for n, p in self.tuned.items()}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        values = {k[len(_TUNED):]: v for k, v in state.items() if k.startswith(_TUNED)}
        if set(values) != set(self.tuned):
            raise StateError(f"zscl state tunes {sorted(values)[:3]}..., this backbone and blocks={self.hp['blocks']} "
                             f"tune {sorted(self.tuned)[:3]}...")
        self._assign({n: torch.from_numpy(np.asarray(v, np.float32)) for n, v in values.items()})
