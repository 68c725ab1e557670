"""Training under ``torch.distributed`` (``torchrun --nproc-per-node N edgecl train ...``).

Every rank runs the whole protocol on its shard of the data and ends with the
same learner as a single process would:

* **Sharding.** Dataset row ``i`` belongs to rank ``i % world_size``. Frozen
  modules embed each rank's rows of a split once (``ShardedFeatures``, in
  memory); ``local_rows`` keeps a rank's part of a pass over the data, and
  ``local_positions`` says where those rows stood in the pass.
  Gradient training iterates ``DistributedBatchLoader``: the global batch of
  ``--batch-size`` rows, in the single-process shuffle order, split across ranks
  (rows ``r, r + W, ...`` of the batch go to rank ``r``).
* **Closed-form statistics** are summed over ranks with ``all_reduce`` in
  float64 (``all_sum``): class sums and counts (prototypes), ridge Gram
  matrix and class sums (RanPAC, SLCA), Gaussian moments per class
  (count, sum, sum of outer products of the Tukey-transformed embeddings;
  FeCAM's shrinkage applies at predict time, after the reduction).
* **Gradient-trained parts** run under ``DistributedDataParallel``
  (``data_parallel``) with a communication hook that weights each rank's
  gradient by its share of the global batch, so the averaged gradient is the
  gradient of the global batch's mean loss (also for a short last batch).
* Only rank 0 logs and writes the run directory; collectives time out after
  ``EDGECL_DIST_TIMEOUT`` seconds (default 1800) so a rank that died does not
  leave the others waiting for ever.

Without an initialised process group every function here is the identity
(or the single-process computation), so the learners' code paths are the same.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .data import BatchLoader
from .errors import EdgeclError, LabelError

DEFAULT_TIMEOUT_S = 1800
# learners whose training goes through the hooks of this module (others, e.g. a plugin's, are refused)
SUPPORTED_LEARNERS = ("simplecil", "aper", "vpt", "ease", "ranpac", "fecam", "slca", "l2p", "dualprompt", "coda_prompt")


class DistributedError(EdgeclError, RuntimeError):
    """A configuration that cannot run under torch.distributed."""


# ------------------------------------------------------------------ process group
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True in a process started by torchrun (or anything setting ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float | None = None) -> str:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...); returns the
    torch device of this rank (``cuda:LOCAL_RANK`` for a CUDA device). NCCL on CUDA, gloo otherwise."""
    if not launched() or is_distributed():
        return device
    timeout_s = float(timeout_s or os.environ.get("EDGECL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"device {device!r} asked for, but CUDA is not available")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return device


def shutdown(completed: bool = False) -> None:
    """Leave the process group. After a completed run the ranks first meet at a barrier and drop finished work
    (DDP reducers, async handles), so that no rank tears its connections down while a peer still uses them."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if completed:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def check_learner(name: str) -> None:
    if is_distributed() and name not in SUPPORTED_LEARNERS:
        raise DistributedError(
            f"learner {name!r} does not train under torch.distributed yet; supported: {', '.join(SUPPORTED_LEARNERS)}")


def main_first(fn: Callable):
    """``fn()`` on each node's first rank (``LOCAL_RANK`` 0), then (after a barrier) on the other ranks: one
    process per node fills the node's caches (embedded backbone, rendered data), the others read them."""
    if not is_distributed():
        return fn()
    first = int(os.environ.get("LOCAL_RANK", rank())) == 0
    out = fn() if first else None
    dist.barrier()
    return out if first else fn()


def main_only(fn: Callable) -> Callable:
    """``fn`` on rank 0, a no-op elsewhere."""
    return fn if is_main() else (lambda *a, **k: None)


# ------------------------------------------------------------------ collectives
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(x, op=None):
    """Sum of ``x`` (numpy array or tensor) over ranks, float64 for floats; ``x`` itself without a group."""
    if not is_distributed():
        return x
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x
    t = (t.double() if t.is_floating_point() else t.long()).to(_comm_device()).contiguous()
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    t = t.cpu()
    return t.numpy() if is_np else t


def all_max(x: int) -> int:
    return int(all_sum(np.array([x], np.int64), op=dist.ReduceOp.MAX)[0]) if is_distributed() else int(x)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: np.ndarray, positions: np.ndarray, total: int) -> np.ndarray:
    """The ``total`` rows of which this rank holds ``rows`` at ``positions``, on every rank."""
    if not is_distributed():
        return rows
    parts = all_gather_objects((np.asarray(positions), np.asarray(rows)))
    ref = max((part for _, part in parts), key=len)  # an empty part may lack the row shape
    out = np.empty((total, *ref.shape[1:]), dtype=ref.dtype)
    for pos, part in parts:
        out[pos] = part
    return out


def all_classes(labels) -> np.ndarray:
    """Sorted distinct labels present on any rank."""
    mine = np.unique(np.asarray(labels, dtype=np.int64))
    if not is_distributed():
        return mine
    return np.unique(np.concatenate([np.asarray(p, np.int64) for p in all_gather_objects(mine)]))


# ------------------------------------------------------------------ sharding
def local_positions(order: np.ndarray) -> np.ndarray:
    """Positions in ``order`` (dataset rows) of this rank's rows (all positions without a group)."""
    order = np.asarray(order, dtype=np.int64)
    if not is_distributed():
        return np.arange(len(order))
    return np.flatnonzero(order % world_size() == rank())


def local_rows(order: np.ndarray) -> np.ndarray:
    """This rank's rows of the pass ``order``."""
    order = np.asarray(order, dtype=np.int64)
    return order[local_positions(order)]


def last_order(loader) -> np.ndarray | None:
    """The dataset rows of ``loader``'s last pass (``BatchLoader.last_order``); None for another iterable."""
    return getattr(loader, "last_order", None)


def shard_positions(order: np.ndarray | None, n_local: int) -> tuple[np.ndarray, int]:
    """Positions in the pass ``order`` (a loader's ``last_order``) of this rank's ``n_local`` rows, and the
    pass length."""
    if not is_distributed():
        return np.arange(n_local), n_local
    pos = None if order is None else local_positions(order)
    if pos is None or len(pos) != n_local:
        raise DistributedError("statistics of rows that did not come from the loader's last pass")
    return pos, len(order)


class DistributedBatchLoader(BatchLoader):
    """``BatchLoader`` whose passes yield this rank's part (rows ``rank::world``) of every global batch.

    The shuffle and the number of batches are those of the single-process loader;
    ``batch_weight`` is the share of the global batch the last yielded part holds
    (``data_parallel`` weights this rank's gradient by it).
    """

    batch_weight = 1.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from .data.dataset import prefetched, preprocess_rows

        order, r, w = self.next_order(), rank(), world_size()

        def batch(i: int) -> tuple[torch.Tensor, torch.Tensor, float]:
            full = order[i : i + self.batch_size]
            idx = full[r::w]
            x = preprocess_rows(self.dataset.images, idx, self.input_size, self.mean, self.std)
            return torch.from_numpy(x), torch.from_numpy(self.dataset.labels[idx]), len(idx) / len(full)

        for x, y, weight in prefetched(batch, range(0, len(order), self.batch_size)):
            self.batch_weight = weight
            yield x, y


def make_loader(*args, **kwargs) -> BatchLoader:
    """A ``DistributedBatchLoader`` in a process group, else a ``BatchLoader`` (same arguments)."""
    return (DistributedBatchLoader if is_distributed() else BatchLoader)(*args, **kwargs)


# ------------------------------------------------------------------ gradient training
class Composed(nn.Module):
    """``head(features(x))`` as one module (what ``data_parallel`` wraps for a features + classifier pair)."""

    def __init__(self, features: Callable, head: nn.Module):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _weighted_allreduce(loader, bucket):
    """Comm hook: sum over ranks of each rank's gradient times its share of the global batch."""
    weight = float(getattr(loader, "batch_weight", 1.0 / world_size()))
    buf = bucket.buffer()
    if weight == 0.0:
        buf.zero_()  # an empty part: its loss (and gradient) is NaN
    else:
        buf.mul_(weight)
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])


def data_parallel(model: nn.Module, loader, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` itself, or in a process group ``model`` under DDP whose gradients are weighted by each rank's
    share of ``loader``'s current global batch (a ``DistributedBatchLoader``) before they are summed."""
    if not is_distributed():
        return model
    ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False,  # buffers are frozen
                                              find_unused_parameters=find_unused_parameters)
    ddp.register_comm_hook(loader, _weighted_allreduce)
    return ddp


# ------------------------------------------------------------------ closed-form statistics
def class_sums(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class float64 sums ``(n, D)`` and counts ``(n,)`` over all ranks; ``n`` covers ``num_classes`` and
    every label. ``ValueError`` if no rank has a sample."""
    if all_sum(np.array([labels.numel()], np.int64))[0] == 0:
        raise LabelError("fit_task got no training samples")
    n = all_max(max(int(labels.max()) + 1 if labels.numel() else 0, num_classes))
    sums = torch.zeros(n, feats.shape[1], dtype=torch.float64).index_add_(0, labels, feats.double())
    counts = torch.bincount(labels, minlength=n)
    return all_sum(sums), all_sum(counts)


def ridge_statistics(H: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``H^T H``, ``H^T Y`` (one-hot over ``n`` classes) and class counts, summed over ranks (float64)."""
    return all_sum(H.T @ H), all_sum(H.T @ np.eye(n)[labels]), all_sum(np.bincount(labels, minlength=n))


def select_lambda(H: np.ndarray, labels: np.ndarray, num_classes: int, lambdas, val_fraction: float, seed: int,
                  single: Callable, order: np.ndarray | None) -> float:
    """RanPAC's ridge parameter (``single``: ``learners.closed_form.select_lambda``) on the rows of all ranks,
    in the order of the pass ``order`` they were embedded in (a loader's ``last_order``).

    With at most ``M`` fitting rows (the single-process thin-SVD branch) the rows are gathered and ``single``
    runs on them; with more, the fit/validation Gram matrices and class sums are reduced and the validation
    MSE of every ``lam`` follows from them (the eigendecomposition branch of ``single``).
    """
    positions, n = shard_positions(order, len(labels))
    n_val = int(round(val_fraction * n))
    if not is_distributed() or n_val < 1 or n - n_val <= H.shape[1] or len(lambdas) == 1:
        return single(gather_rows(H, positions, n), gather_rows(labels, positions, n), num_classes, lambdas,
                      val_fraction, seed)
    order = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, bool)
    is_val[order[n - n_val :]] = True
    val = is_val[positions]
    H = np.asarray(H, np.float64)
    Y = np.eye(num_classes)[labels]
    Gf, Bf = all_sum(H[~val].T @ H[~val]), all_sum(H[~val].T @ Y[~val])
    Gv, Cv = all_sum(H[val].T @ H[val]), all_sum(H[val].T @ Y[val])
    e, V = np.linalg.eigh(Gf)
    B, Gv, Cv = V.T @ Bf, V.T @ Gv @ V, V.T @ Cv
    mse = []
    for lam in lambdas:
        W = B / (np.maximum(e, 0.0) + lam)[:, None]  # ridge weights in the eigenbasis
        sse = float(np.sum(W * (Gv @ W)) - 2.0 * np.sum(W * Cv) + n_val)  # |Hv W - Yv|^2, Yv one-hot
        mse.append(sse / (n_val * num_classes))
    return float(lambdas[int(np.argmin(mse))])


def gaussian_update(head, feats: np.ndarray, labels: np.ndarray, classes: list[int], num_classes: int):
    """``head`` with the examples of ``classes`` of all ranks added: per class, the count, sum and sum of outer
    products of the Tukey-transformed embeddings are reduced (float64), then merged as one batch."""
    from edgecl_runtime.heads.gaussian import tukey

    z = tukey(feats, head.beta)
    d = z.shape[1]
    for c in classes:
        zc = z[labels == c]
        packed = all_sum(np.concatenate([[len(zc)], zc.sum(axis=0), (zc.T @ zc).ravel()]))
        n, total, outer = int(round(packed[0])), packed[1 : d + 1], packed[d + 1 :].reshape(d, d)
        mean = total / n
        head = head.with_moments(c if c < num_classes else None, n, mean, outer - n * np.outer(mean, mean))
    return head


# ------------------------------------------------------------------ embeddings
class ShardedFeatures:
    """The embedding service of one rank: a frozen module embeds this rank's rows of a split once (kept in
    memory); a changing module embeds exactly the rows asked for. Requests must be this rank's rows.

    Wraps a ``FeatureExtractor`` without an on-disk store; ``auto`` engine choices are rank 0's."""

    def __init__(self, inner):
        self.inner = inner
        self._shards: dict[tuple[str, str], np.ndarray] = {}

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def embed(self, module: nn.Module, dataset, indices=None, *, frozen: bool = True,
              progress: Callable | None = None) -> torch.Tensor:
        idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        r, w = rank(), world_size()
        if np.any(idx % w != r):
            raise DistributedError(f"rank {r} asked for embeddings of another rank's rows")
        if not frozen:
            return self.inner.embed(module, dataset, idx, frozen=False, progress=progress)
        state = self.inner.state_key(module)
        key = (state, self.inner.data_key(dataset.images))
        if key not in self._shards:
            if state not in self.inner.engines_used:
                kind = self.inner.engine_kind(module, state, dataset) if is_main() else None
                self.inner.engines_used[state] = broadcast_object(kind)
            mine = np.arange(r, len(dataset), w)
            self._shards[key] = self.inner.embed(module, dataset, mine, frozen=True, progress=progress).numpy()
        return torch.from_numpy(self._shards[key][(idx - r) // w])

    def summary(self) -> str:
        return f"{self.inner.summary()}, sharded over {world_size()} ranks"
