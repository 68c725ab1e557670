"""``PeftModel``: a frozen backbone plus one PEFT method; ``ParallelEmbedding``: several of them in one graph.

``PeftModel(model, method, ...)`` injects the method's modules into a
``shared_copy`` of ``model`` (the frozen timm backbone itself is never
changed) and only those modules' parameters train. ``forward`` maps images to
the adapted pre-logits embedding.

``ParallelEmbedding(model, branches, include_base)`` concatenates the
embeddings of the pre-trained model (optional) and of each ``PeftModel``
branch. On a ViT, branches that leave the patch embedding alone (adapter,
VPT) share one ``vit_tokens`` computation, so the exported ONNX graph has a
single patch-embedding stem feeding parallel block stacks (APER: pre-trained +
adapted; EASE: one per task adapter). All branches use the same weight
tensors, so an ONNX file stores each frozen weight once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapter import add_adapters
from .base import PeftError, describe, is_vit, require_vit, shared_copy, vit_pool, vit_tokens
from .ssf import add_ssf
from .vpt import VisualPrompts

PEFT_METHODS = ("adapter", "ssf", "vpt_shallow", "vpt_deep")


class PeftModel(nn.Module):
    """A frozen backbone adapted by ``method`` (one of ``PEFT_METHODS``).

    Options: ``bottleneck``, ``scale`` (adapter), ``prompt_length`` (VPT),
    ``seed`` (initialisation of the new weights).
    """

    def __init__(
        self, model: nn.Module, method: str, *, bottleneck: int = 16, scale: float = 0.1, prompt_length: int = 5, seed: int = 0
    ):
        super().__init__()
        if method not in PEFT_METHODS:
            raise PeftError(f"unknown PEFT method {method!r}; choose one of {', '.join(PEFT_METHODS)}")
        if method != "ssf":
            require_vit(model, method)
        self.method = method
        self.vit = is_vit(model)
        self._frozen = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
        self.model = shared_copy(model)
        self.prompts: VisualPrompts | None = None
        gen = torch.Generator().manual_seed(int(seed))
        if method == "adapter":
            add_adapters(self.model, int(bottleneck), float(scale), seed=int(seed))
        elif method == "ssf":
            if not add_ssf(self.model):
                raise PeftError(f"SSF found no linear, convolution or norm layer in {describe(model)}")
        else:
            self.prompts = VisualPrompts(self.model, int(prompt_length), deep=method == "vpt_deep", generator=gen)
        for name, p in self.named_parameters():
            p.requires_grad_(id(p) not in self._frozen)
        self.eval()

    def train(self, mode: bool = True) -> "PeftModel":
        # The frozen backbone keeps its eval-mode behaviour (BatchNorm statistics,
        # no dropout); PEFT modules have no train/eval difference.
        return super().train(False)

    @property
    def shares_stem(self) -> bool:
        """True when the patch embedding (tokens before the first block) is the pre-trained one."""
        return self.vit and self.method != "ssf"

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return vit_tokens(self.model, x)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Adapted embedding from the pre-trained stem's tokens (``shares_stem`` branches)."""
        if self.prompts is not None:
            tokens = self.prompts.run_blocks(self.model.blocks, tokens)
        else:
            tokens = self.model.blocks(tokens)
        return vit_pool(self.model, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.vit:
            return self.model(x)
        return self.from_tokens(self.tokens(x))

    # ---------------------------------------------------------- parameters
    def peft_named_parameters(self) -> dict[str, nn.Parameter]:
        """The PEFT parameters by name (the frozen backbone's are left out)."""
        return {n: p for n, p in self.named_parameters() if id(p) not in self._frozen}

    def peft_parameters(self) -> list[nn.Parameter]:
        return list(self.peft_named_parameters().values())

    def freeze(self) -> "PeftModel":
        for p in self.peft_parameters():
            p.requires_grad_(False)
            p.grad = None
        return self

    def peft_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.peft_named_parameters().items()}

    def load_peft_state(self, state: dict[str, Any]) -> None:
        """Load ``peft_state()`` output; ``PeftError`` (nothing changed) on missing, extra or misshapen arrays."""
        own = self.peft_named_parameters()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise PeftError(f"{self.method} state does not fit: missing {missing[:3]}, unexpected {extra[:3]}")
        values = {n: torch.as_tensor(state[n], dtype=own[n].dtype) for n in own}
        bad = [n for n in own if values[n].shape != own[n].shape]
        if bad:
            raise PeftError(f"{self.method} state has wrong shapes for {bad[:3]}")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(values[n])


class ParallelEmbedding(nn.Module):
    """``concat([model(x)] if include_base, *[b(x) for b in branches])``, sharing the ViT stem where possible."""

    def __init__(self, model: nn.Module, branches: list[PeftModel], include_base: bool = True):
        super().__init__()
        if not branches and not include_base:
            raise PeftError("ParallelEmbedding needs the base model or at least one branch")
        self.model = model
        self.branches = nn.ModuleList(branches)
        self.include_base = include_base
        self.vit = is_vit(model)

    def train(self, mode: bool = True) -> "ParallelEmbedding":
        # Frozen backbone: never train mode (BatchNorm statistics are shared with it).
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.vit and (self.include_base or any(b.shares_stem for b in self.branches))
        tokens = vit_tokens(self.model, x) if stem else None
        out = []
        if self.include_base:
            out.append(vit_pool(self.model, self.model.blocks(tokens)) if stem else self.model(x))
        for b in self.branches:
            out.append(b.from_tokens(tokens) if tokens is not None and b.shares_stem else b(x))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]
