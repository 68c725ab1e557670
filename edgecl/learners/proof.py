"""PROOF (Zhou et al., "Learning without Forgetting for Vision-Language Models"): device adds classes from images.

The CLIP model stays frozen. Each task adds a projection on the image side and one on the text side
(two-layer ReLU MLPs; the features are projected by the *sum* of all tasks' projections, and the
earlier tasks' projections are frozen) and a few context prompts; one cross-modal fusion module
(one-head self-attention with a residual and a layer norm, shared by all tasks) contextualises, for
each image, the sequence [projected image feature, every class's projected text feature, every class's
projected visual prototype, the context prompts]. A class's score is the sum of three terms:

    image <-> text        n(P_img(f)) . n(P_txt(t_c))
    image <-> text, fused a_img . a_txt_c
    image <-> prototype   a_img . a_pro_c           (fused, as in the reference code)

Training (per task, on cached CLIP features, since CLIP is frozen) minimises cross-entropy of the fused
image-text and image-prototype terms over all classes seen so far plus the CLIP contrastive loss of the
projected image and its class's projected text. Visual prototypes are class means of the unit CLIP
image features; text features are the CLIP text embeddings of the class names.

The bundle's ``features`` are the unit CLIP image embeddings; the projections, the fusion module and the
context prompts are the ``proof_fusion`` head (``edgecl_runtime.heads.proof``), scored in the single-file
model with the prototypes and texts as graph inputs. On the device a class is added from images: its
prototype is their mean and, having no name embedding, its text feature is its own unit prototype. By name,
the bundle's ``text.onnx`` gives the name's unit text prototype, which enters as one more example (so a
class added by name alone has it as both its prototype and its text feature; ``docs/mixtures.md``).

Departures from the paper, see ``docs/mixtures.md``: no exemplar memory; the fused text and prototype
features are per image (the reference averages them over the test batch, making a prediction depend on
the other images of its batch); the fusion input is the unit image feature at test time as in training.

Hyper-parameters: ``hidden`` (projection width, 0: the CLIP width), ``context`` (prompts per task, 3),
``epochs`` (5), ``lr`` (1e-3), ``weight_decay`` (0.0005), ``batch_size`` (64), ``template`` (``"{}"``),
``seed`` (0).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl_runtime.heads.proof import FUSION, PROJECTIONS, ProofFusionHead

from ..errors import StateError
from ..loop import cosine_schedule, train
from .head_learner import HeadLearner
from .hparams import require
from .registry import register_learner
from .training import task_labels
from .vlm import UnitImageTower, class_text, clip_model, loader_class_names, text_features


class Projections(nn.Module):
    """The sum of per-task two-layer ReLU MLPs (``D -> H -> D``); earlier tasks' MLPs are frozen."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.mlps = nn.ModuleList()

    def extend(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.mlps.append(nn.Sequential(nn.Linear(self.dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(mlp(x) for mlp in self.mlps)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        w1 = torch.stack([m[0].weight.T for m in self.mlps]), torch.stack([m[0].bias for m in self.mlps])
        w2 = torch.stack([m[2].weight.T for m in self.mlps]), torch.stack([m[2].bias for m in self.mlps])
        out = dict(zip(("w1", "b1", "w2", "b2"), (*w1, *w2)))
        return {f"{prefix}_{k}": v.detach().cpu().numpy().astype(np.float32) for k, v in out.items()}

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        w1, b1, w2, b2 = (torch.tensor(np.asarray(arrays[f"{prefix}_{k}"], np.float32)) for k in ("w1", "b1", "w2", "b2"))
        self.hidden, self.mlps = int(w1.shape[2]), nn.ModuleList()
        for t in range(w1.shape[0]):
            self.extend()
            mlp = self.mlps[-1]
            with torch.no_grad():
                mlp[0].weight.copy_(w1[t].T), mlp[0].bias.copy_(b1[t]), mlp[2].weight.copy_(w2[t].T), mlp[2].bias.copy_(b2[t])
        for p in self.parameters():
            p.requires_grad_(False)


class ProofFusion(nn.Module):
    """Projections, context prompts and the fusion module; ``forward(f, prototypes, texts)`` is the score sum.

    ``f`` are unit CLIP image features ``(N, D)``, ``prototypes`` the raw class means ``(C, D)``, ``texts``
    the class text features ``(C, D)``; the same function as ``ProofFusionHead.scores`` (the export scorer).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.img, self.txt = Projections(dim, hidden), Projections(dim, hidden)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o, self.ln = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-5)
        self.context = nn.ParameterList()

    def extend(self, prompts: int, generator: torch.Generator) -> None:
        """A new task: new image and text projections and ``prompts`` context prompts, older ones frozen; the
        fusion module (shared by all tasks) trains."""
        self.img.extend(), self.txt.extend()
        for p in [*self.q.parameters(), *self.k.parameters(), *self.v.parameters(), *self.o.parameters(),
                  *self.ln.parameters()]:
            p.requires_grad_(True)
        for p in self.context:
            p.requires_grad_(False)
        self.context.append(nn.Parameter(torch.randn(prompts, self.ln.normalized_shape[0], generator=generator)))

    def prompts(self) -> torch.Tensor:
        return torch.cat(list(self.context)) if len(self.context) else torch.zeros(0, self.ln.normalized_shape[0])

    def terms(self, f: torch.Tensor, prototypes: torch.Tensor, texts: torch.Tensor):
        """``(image-text, fused image-text, fused image-prototype)`` ``(N, C)`` terms and the projected image ``fi``."""
        fi = F.normalize(self.img(F.normalize(f, dim=-1)), dim=-1)
        ti, pi = F.normalize(self.txt(texts), dim=-1), F.normalize(self.img(prototypes), dim=-1)
        c = ti.shape[0]
        a_img, tokens = self.fuse(fi, torch.cat([ti, pi, self.prompts()]), 2 * c)
        fused = torch.einsum("nd,ncd->nc", a_img, tokens[:, :c])
        proto = torch.einsum("nd,ncd->nc", a_img, tokens[:, c:])
        return fi @ ti.T, fused, proto, fi

    def fuse(self, x: torch.Tensor, shared: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion module over each image's sequence ``[x_n; shared]``: its output at the image ``(N, D)`` and at
        the first ``keep`` shared tokens ``(N, keep, D)``.

        The sequences differ only in their first token, so a shared token's attention is its attention within
        ``shared`` mixed with the image's value by the weight the softmax gives the image,
        ``w = sigmoid(q.k_x / sqrt(D) - logsumexp_j q.k_j / sqrt(D))``: per image O(keep * D) work instead of
        O((1 + M)^2 * D).
        """
        scale = shared.shape[-1] ** -0.5
        qs, ks, vs = self.q(shared), self.k(shared), self.v(shared)
        qx, kx, vx = self.q(x), self.k(x), self.v(x)
        att = torch.softmax(torch.cat([(qx * kx).sum(-1, keepdim=True), qx @ ks.T], 1) * scale, dim=-1)
        a_img = self.ln(self.o(att[:, :1] * vx + att[:, 1:] @ vs) + x)
        inner = qs[:keep] @ ks.T * scale
        base = self.o(torch.softmax(inner, dim=-1) @ vs)
        w = torch.sigmoid(kx @ qs[:keep].T * scale - torch.logsumexp(inner, dim=-1))
        mixed = base + w[..., None] * (self.o(vx)[:, None] - base)  # o(w v_x + (1 - w) u) = w o(v_x) + (1 - w) o(u)
        return a_img, self.ln(mixed + shared[:keep])

    def forward(self, f: torch.Tensor, prototypes: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        plain, fused, proto, _ = self.terms(f, prototypes, texts)
        return plain + fused + proto

    def arrays(self) -> dict[str, np.ndarray]:
        fusion = {"attn_q": self.q.weight.T, "attn_k": self.k.weight.T, "attn_v": self.v.weight.T,
                  "attn_o_w": self.o.weight.T, "attn_o_b": self.o.bias, "ln_g": self.ln.weight, "ln_b": self.ln.bias,
                  "context": self.prompts()}
        out = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in fusion.items()}
        return {**self.img.arrays("img"), **self.txt.arrays("txt"), **out}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ProofFusion":
        """A frozen module holding ``arrays`` (a ``proof_fusion`` head's projections, fusion and prompts)."""
        dim, hidden = np.shape(arrays["img_w1"])[1], np.shape(arrays["img_w1"])[2]
        module = cls(int(dim), int(hidden))
        module.img.load_arrays(arrays, "img"), module.txt.load_arrays(arrays, "txt")
        t = {k: torch.from_numpy(np.asarray(arrays[k], np.float32).copy()) for k in FUSION}
        with torch.no_grad():
            for lin, key in ((module.q, "attn_q"), (module.k, "attn_k"), (module.v, "attn_v"), (module.o, "attn_o_w")):
                lin.weight.copy_(t[key].T)
            module.o.bias.copy_(t["attn_o_b"]), module.ln.weight.copy_(t["ln_g"]), module.ln.bias.copy_(t["ln_b"])
        module.context.append(nn.Parameter(t["context"]))
        return module.requires_grad_(False).eval()


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss of matching rows of unit ``image`` and ``text`` features."""
    logits = scale * image @ text.T
    target = torch.arange(len(image))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@register_learner
class Proof(HeadLearner):
    name = "proof"
    head_class = ProofFusionHead
    defaults = {"hidden": 0, "context": 3, "epochs": 5, "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 64,
                "template": "{}", "seed": 0}
    positive = ("epochs", "lr", "batch_size", "context")
    hparam_help = {
        "hidden": "hidden width of each task's image and text projection MLP (0: the CLIP embedding width)",
        "context": "learnable context prompts added to the fusion module's sequence per task",
        "epochs": "training epochs of the new projections and the fusion module per task (on cached CLIP features)",
        "lr": "peak learning rate (AdamW, cosine decay)",
        "weight_decay": "AdamW weight decay",
        "batch_size": "training batch size (images)",
        "template": "text of a class for the CLIP text tower, '{}' standing for its name",
        "seed": "seed of the projections' initialisation, the prompts and the batch order",
    }

    def validate(self, hp: dict[str, Any]) -> None:
        super().validate(hp)
        require(self.name, hp["hidden"] >= 0 and hp["weight_decay"] >= 0, "hidden and weight_decay must be >= 0")
        require(self.name, "{}" in hp["template"], f"template must contain '{{}}', got {hp['template']!r}")

    def __init__(self, backbone, device: str = "cpu", **hparams: Any):
        super().__init__(backbone, device, **hparams)
        self.clip = clip_model(backbone, self.name)
        dim = self.head_dim
        self.fusion = ProofFusion(dim, self.hp["hidden"] or dim).to(device)
        self._tower = UnitImageTower(self.clip)
        self.train_stats: dict[str, float] | None = None

    @property
    def tasks(self) -> int:
        return len(self.fusion.img.mlps)

    def embedding_module(self) -> nn.Module:
        return self._tower

    def fit_task(self, loader, progress: Callable | None = None) -> None:
        classes = task_labels(loader, self.num_classes, new_only=True)
        total = int(classes.max()) + 1
        names = loader_class_names(loader, total, self.name)
        feats, labels = self.embed(loader, progress)
        protos, counts, texts, flags = self._class_arrays()
        new = torch.arange(self.num_classes, total)
        protos = torch.cat([protos, torch.stack([feats[labels == c].mean(0) for c in new])])
        counts = torch.cat([counts, torch.stack([(labels == c).sum() for c in new])])
        new_texts = text_features(self.backbone, [class_text(n, self.hp["template"]) for n in names[self.num_classes:]])
        texts, flags = torch.cat([texts, new_texts]), torch.cat([flags, torch.zeros(len(new), dtype=torch.int64)])
        g = torch.Generator().manual_seed(self.hp["seed"] + self.tasks)
        self.fusion.extend(self.hp["context"], g)
        self.train_stats = self._train(feats, labels, protos, self._effective(protos, texts, flags), g)
        self._set_head(protos, counts, texts, flags)

    @staticmethod
    def _effective(protos: torch.Tensor, texts: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        return torch.where(flags[:, None] == 1, F.normalize(protos, dim=-1), texts)

    def _train(self, feats, labels, protos, texts, g: torch.Generator) -> dict[str, float]:
        hp, fusion = self.hp, self.fusion
        params = [p for p in fusion.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        batches = [idx for _ in range(hp["epochs"]) for idx in torch.randperm(len(feats), generator=g).split(hp["batch_size"])]
        sched = cosine_schedule(opt, len(batches))
        scale, seen = self.clip.logit_scale.detach().exp().float(), {"loss": 0.0, "n": 0}

        def loss_fn(idx):
            f, y = feats[idx].to(self.device), labels[idx].to(self.device)
            _, fused, proto, fi = fusion.terms(f, protos, texts)
            loss = F.cross_entropy(fused, y) + F.cross_entropy(proto, y)
            loss = loss + clip_loss(fi, F.normalize(fusion.txt(texts[y]), dim=-1), scale)
            seen["loss"], seen["n"] = seen["loss"] + float(loss.detach()), seen["n"] + 1
            return loss

        fusion.train()
        train(batches, loss_fn, opt, sched)
        fusion.eval()
        return {"loss": seen["loss"] / max(seen["n"], 1)}

    def _class_arrays(self):
        if self.head is None:
            d = self.head_dim
            return torch.zeros(0, d), torch.zeros(0, dtype=torch.int64), torch.zeros(0, d), torch.zeros(0, dtype=torch.int64)
        a = self.head.arrays()
        return tuple(torch.from_numpy(np.array(a[k])) for k in ("prototypes", "counts", "texts", "text_from_image"))

    def _set_head(self, protos, counts, texts, flags) -> None:
        self.head = ProofFusionHead(protos.numpy(), counts.numpy(), texts.numpy(), flags.numpy(), self.fusion.arrays())
        self.num_classes = self.head.num_classes

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._load_head(state)
        self.fusion = ProofFusion.from_arrays(state).to(self.device)
        for p in self.fusion.parameters():
            p.requires_grad_(False)
        prompts = self.fusion.context[0]
        tasks = self.tasks
        if prompts.shape[0] % max(tasks, 1):
            raise StateError(f"proof state: {prompts.shape[0]} context prompts for {tasks} tasks")
        self.fusion.context = nn.ParameterList(
            [nn.Parameter(c, requires_grad=False) for c in prompts.detach().split(prompts.shape[0] // tasks)])

    @property
    def embedding_frozen(self) -> bool:
        return True  # CLIP stays frozen: its features can be cached
