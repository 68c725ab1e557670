"""Prompt pools for a frozen timm ViT: L2P, DualPrompt and CODA-Prompt, as plain torch modules.

Prompt methods run a ViT twice: a *query* pass of the frozen model gives the
[CLS] pre-logits ``q`` of an image, ``q`` picks (or weighs) prompts from a pool
of learnable tokens, and a *prompted* pass of the same frozen weights uses
them. Two ways to use prompts (both here):

* prompt-tuning (L2P): the selected tokens are inserted after the prefix
  ([CLS]) tokens, before the first block;
* prefix-tuning (DualPrompt, CODA-Prompt): in chosen blocks the attention
  gets extra keys and values, ``prompt[:, 0]`` (key prefix) and
  ``prompt[:, 1]`` (value prefix), of shape ``(B, 2, L, D)``.

``PromptedViT`` ties both passes and a pool into one module: images ->
embeddings, with key matching (``topk``/``argmax``/gather) or a weighted
combination inside ``forward``, so ``torch.onnx.export`` writes the whole
method as one graph and the runtime needs no prompt logic at all.

The ViT code is generic over timm ``VisionTransformer``: it uses the model's
own stages (``edgecl.peft.base.vit_tokens`` / ``vit_pool``) and, for prefixes,
timm ``Block``/``Attention`` submodules (``norm1``, ``attn.qkv``, ``attn.proj``,
``mlp``, ...); nothing here is specific to one model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import PeftError, require_vit, vit_pool, vit_tokens

# --------------------------------------------------------------- ViT forward


def check_vit(model: nn.Module, method: str) -> int:
    """Number of blocks of a timm ViT whose attention prefix-tuning can enter (``PeftError`` otherwise)."""
    require_vit(model, method)
    if not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") and hasattr(b.attn, "proj") for b in model.blocks):
        raise PeftError(f"{method} needs blocks with attn.qkv and attn.proj (timm Attention)")
    return len(model.blocks)


def _prefix_attention(attn: nn.Module, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` with ``prefix (B, 2, L, C)`` prepended to the keys and values."""
    B, N, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    pk = prefix[:, 0].reshape(B, -1, heads, hd).transpose(1, 2)
    pv = prefix[:, 1].reshape(B, -1, heads, hd).transpose(1, 2)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, heads * hd)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def _block(block: nn.Module, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    if prefix is None:
        return block(x)
    x = x + block.drop_path1(block.ls1(_prefix_attention(block.attn, block.norm1(x), prefix)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def prompted_features(
    model: nn.Module,
    tokens: torch.Tensor,
    insert: torch.Tensor | None = None,
    prefixes: dict[int, torch.Tensor] | None = None,
    pool: str = "cls",
) -> torch.Tensor:
    """Pre-logits of ``model`` from its input ``tokens`` (``vit_tokens``) with prompts.

    ``insert (B, T, D)``: tokens placed after the prefix tokens (prompt-tuning);
    ``prefixes {block index: (B, 2, L, D)}``: key/value prefixes (prefix-tuning);
    ``pool``: ``"cls"`` (the model's own pooling of its tokens, inserted tokens
    left out) or ``"prompt"`` (mean of the outputs at the inserted positions, L2P).
    """
    prefixes = prefixes or {}
    t = tokens
    n_pre = model.num_prefix_tokens
    n_ins = 0 if insert is None else insert.shape[1]
    if insert is not None:
        t = torch.cat([t[:, :n_pre], insert, t[:, n_pre:]], dim=1)
    for i, block in enumerate(model.blocks):
        t = _block(block, t, prefixes.get(i))
    if pool == "prompt":
        if insert is None:
            raise PeftError("pool='prompt' needs inserted prompt tokens")
        return model.fc_norm(model.norm(t[:, n_pre : n_pre + n_ins]).mean(dim=1))
    if insert is not None:
        t = torch.cat([t[:, :n_pre], t[:, n_pre + n_ins :]], dim=1)
    return vit_pool(model, t)


# ------------------------------------------------------------------- pools


@dataclass
class Prompts:
    """What a pool gives the prompted pass, plus its auxiliary training loss."""

    insert: torch.Tensor | None = None
    prefixes: dict[int, torch.Tensor] = field(default_factory=dict)
    aux_loss: torch.Tensor | None = None


def cosine(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``(B, D) x (M, D) -> (B, M)`` cosine similarities."""
    return F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).T


class L2PPool(nn.Module):
    """L2P (Wang et al., CVPR 2022): ``size`` prompts of ``length`` tokens, each with a key.

    An image takes the ``top_n`` prompts whose keys are most cosine-similar to
    its query and prepends their ``top_n * length`` tokens. The surrogate loss
    ``sum_selected (1 - cos(q, key))`` (batch mean) pulls the chosen keys towards the queries.
    """

    def __init__(self, dim: int, size: int = 10, length: int = 5, top_n: int = 5):
        super().__init__()
        if not 1 <= top_n <= size:
            raise PeftError(f"top_n must be in 1..size={size}, got {top_n}")
        self.top_n = top_n
        self.prompts = nn.Parameter(torch.empty(size, length, dim).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(size, dim).uniform_(-1, 1))

    def forward(self, q: torch.Tensor, task: int | None = None) -> Prompts:
        sim = cosine(q, self.keys)
        top = sim.topk(self.top_n, dim=1)
        chosen = self.prompts[top.indices]  # (B, N, L, D): Gather
        insert = chosen.reshape(q.shape[0], -1, self.prompts.shape[-1])
        # sum over the N selected, mean over the batch: the gradient of L2P's ``-reduce_sim``
        return Prompts(insert=insert, aux_loss=(1.0 - top.values).sum(dim=1).mean())


class DualPromptPool(nn.Module):
    """DualPrompt (Wang et al., ECCV 2022): a shared G-prompt and one keyed E-prompt per task.

    G-prompt prefixes ``(len(g_layers), 2, g_length, D)`` in the early blocks,
    E-prompt prefixes ``(len(e_layers), 2, e_length, D)`` in later blocks. An
    E-prompt and its key are added by ``add_task``; in training the task's own
    E-prompt is used and its key pulled to the queries (``1 - cos``), at
    inference the E-prompt whose key is closest to the query (``argmax``).
    Earlier tasks' E-prompts and keys are frozen.
    """

    def __init__(self, dim: int, g_layers=(0, 1), e_layers=(2, 3, 4), g_length: int = 5, e_length: int = 5):
        super().__init__()
        self.dim, self.e_length = dim, e_length
        self.g_layers, self.e_layers = tuple(g_layers), tuple(e_layers)
        if set(self.g_layers) & set(self.e_layers):
            raise PeftError(f"g_layers {self.g_layers} and e_layers {self.e_layers} overlap")
        self.g_prompt = nn.Parameter(torch.empty(len(self.g_layers), 2, g_length, dim).uniform_(-1, 1))
        self.e_prompts = nn.ParameterList()
        self.e_keys = nn.ParameterList()

    @property
    def num_tasks(self) -> int:
        return len(self.e_keys)

    def add_task(self) -> None:
        for p in list(self.e_prompts) + list(self.e_keys):
            p.requires_grad_(False)
        self.e_prompts.append(nn.Parameter(torch.empty(len(self.e_layers), 2, self.e_length, self.dim).uniform_(-1, 1)))
        self.e_keys.append(nn.Parameter(torch.empty(self.dim).uniform_(-1, 1)))

    def forward(self, q: torch.Tensor, task: int | None = None) -> Prompts:
        if self.num_tasks == 0:
            raise RuntimeError("DualPromptPool has no task yet (call add_task)")
        B = q.shape[0]
        keys = torch.stack(list(self.e_keys))
        if task is None:
            idx = cosine(q, keys).argmax(dim=1)
            e = torch.stack(list(self.e_prompts))[idx]  # (B, layers, 2, L, D): Gather
            aux = None
        else:
            e = self.e_prompts[task].unsqueeze(0).expand(B, -1, -1, -1, -1)
            aux = 1.0 - cosine(q, keys[task : task + 1]).mean()
        g = self.g_prompt.unsqueeze(0).expand(B, -1, -1, -1, -1)
        prefixes = {layer: g[:, i] for i, layer in enumerate(self.g_layers)}
        prefixes.update({layer: e[:, i] for i, layer in enumerate(self.e_layers)})
        return Prompts(prefixes=prefixes, aux_loss=aux)


def orthonormal_rows(n: int, dim: int, against: torch.Tensor | None = None, generator=None) -> torch.Tensor:
    """``n`` random unit rows of size ``dim``, orthogonal to each other and to the rows of ``against``
    while that is possible (at most ``dim`` rows in all); beyond that, random unit rows."""
    new = torch.randn(n, dim, generator=generator)
    old = against if against is not None and against.numel() else torch.zeros(0, dim)
    if old.shape[0] + n <= dim:
        if old.shape[0]:
            basis = torch.linalg.qr(old.T).Q  # (dim, k) orthonormal basis of the old rows
            new = new - (new @ basis) @ basis.T
        new = torch.linalg.qr(new.T).Q.T
    return F.normalize(new, dim=1)


class CodaPromptPool(nn.Module):
    """CODA-Prompt (Smith et al., CVPR 2023): prompts as attention-weighted sums of components.

    Per prefixed block ``l`` there are components ``P (M, 2, L, D)``, keys
    ``K (M, D)`` and attention vectors ``A (M, D)``; an image's prompt is
    ``sum_m cos(q * A_m, K_m) P_m`` -- no hard selection, so the whole pool is
    differentiable. ``add_task`` grows every block's pool by
    ``per_task`` components initialised orthogonal to the old ones (Gram-Schmidt),
    and freezes the old ones. ``aux_loss`` is the orthogonality penalty
    ``mean((X X^T - I)^2)`` over the rows of K, A and flattened P.
    """

    def __init__(self, dim: int, layers=(0, 1, 2, 3, 4), length: int = 8, per_task: int = 10, seed: int = 0):
        super().__init__()
        self.dim, self.length, self.per_task = dim, length, per_task
        self.layers = tuple(layers)
        self._gen = torch.Generator().manual_seed(seed)
        self.comps = nn.ParameterList()  # per task: (layers, m, 2, L, D)
        self.keys = nn.ParameterList()  # per task: (layers, m, D)
        self.attn = nn.ParameterList()  # per task: (layers, m, D)

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    def _grown(self, old: nn.ParameterList, width: int) -> nn.Parameter:
        nl = len(self.layers)
        rows = []
        for layer in range(nl):
            prev = torch.cat([p[layer].reshape(-1, width) for p in old]) if len(old) else None
            rows.append(orthonormal_rows(self.per_task, width, prev, self._gen))
        return nn.Parameter(torch.stack(rows))

    def add_task(self, task_components: int | None = None) -> None:
        for p in list(self.comps) + list(self.keys) + list(self.attn):
            p.requires_grad_(False)
        nl, L, D = len(self.layers), self.length, self.dim
        comps = self._grown(self.comps, 2 * L * D)
        self.comps.append(nn.Parameter(comps.data.reshape(nl, self.per_task, 2, L, D)))
        self.keys.append(self._grown(self.keys, D))
        self.attn.append(self._grown(self.attn, D))

    def forward(self, q: torch.Tensor, task: int | None = None) -> Prompts:
        if self.num_tasks == 0:
            raise RuntimeError("CodaPromptPool has no task yet (call add_task)")
        P = torch.cat(list(self.comps), dim=1)  # (layers, M, 2, L, D)
        K = torch.cat(list(self.keys), dim=1)  # (layers, M, D)
        A = torch.cat(list(self.attn), dim=1)
        qa = F.normalize(q[:, None, None, :] * A[None], dim=-1)  # (B, layers, M, D)
        alpha = (qa * F.normalize(K, dim=-1)[None]).sum(dim=-1)  # (B, layers, M)
        prompt = torch.einsum("blm,lmk->blk", alpha, P.flatten(2)).reshape(-1, *P.shape[:1], *P.shape[2:])
        prefixes = {layer: prompt[:, i] for i, layer in enumerate(self.layers)}
        aux = None
        if task is not None:
            aux = sum(_ortho_penalty(X[i].reshape(X.shape[1], -1)) for X in (K, A, P) for i in range(X.shape[0]))
        return Prompts(prefixes=prefixes, aux_loss=aux)


def _ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    gram = rows @ rows.T
    return ((gram - torch.eye(rows.shape[0])) ** 2).mean()


# ------------------------------------------------------------- the module


class PromptedViT(nn.Module):
    """Query pass of the frozen ViT -> pool -> prompted pass: images ``(N, 3, H, W)`` -> ``(N, D)``.

    ``forward`` is what is exported (one ONNX graph: both passes, the key
    matching and the gather or weighted sum); ``encode(x, task)`` is the
    training-time version that also returns the pool's auxiliary loss.
    """

    def __init__(self, backbone: nn.Module, pool: nn.Module, pool_mode: str = "cls", method: str = "prompts"):
        super().__init__()
        self.depth = check_vit(backbone.model, method)
        if pool_mode not in ("cls", "prompt"):
            raise PeftError(f"pool_mode must be 'cls' or 'prompt', got {pool_mode!r}")
        layers = set(getattr(pool, "layers", ())) | set(getattr(pool, "g_layers", ())) | set(getattr(pool, "e_layers", ()))
        bad = sorted(i for i in layers if not 0 <= i < self.depth)
        if bad:
            raise PeftError(f"prompt layers {bad} do not exist in a ViT with {self.depth} blocks")
        self.backbone, self.pool, self.pool_mode = backbone, pool, pool_mode

    def encode(self, x: torch.Tensor, task: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        vit = self.backbone.model
        tokens = vit_tokens(vit, x)  # the patch embedding is shared by both passes
        with torch.no_grad():
            q = vit_pool(vit, vit.blocks(tokens))  # == backbone(x): the frozen model's [CLS] pre-logits
        p = self.pool(q, task)
        return prompted_features(vit, tokens, p.insert, p.prefixes, self.pool_mode), p.aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]
