"""The ridge classifier of RanPAC and SLCA (the runtime's ``ridge`` head, grown task by task).

``select_lambda`` is RanPAC's choice of the ridge parameter and ``grow_ridge``
its per-task update, shared with SLCA's closed-form classifier alignment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecl_runtime.heads.ridge import RidgeHead, random_features

from .. import distributed
from .hparams import require
from .labels import task_classes

LAMBDA_GRID = [10.0**k for k in range(-8, 9)]  # RanPAC's grid
RIDGE_DEFAULTS: dict[str, Any] = {"lambda_min_exp": -8, "lambda_max_exp": 8, "val_fraction": 0.2, "seed": 0}


def check_ridge_hparams(learner: str, hp: dict[str, Any]) -> None:
    """The ridge hyper-parameters' bounds (``ConfigError``)."""
    require(learner, 0 < hp["val_fraction"] < 1, f"val_fraction must lie in (0, 1), got {hp['val_fraction']}")
    require(learner, hp["lambda_min_exp"] <= hp["lambda_max_exp"], "lambda_min_exp must be <= lambda_max_exp")


def select_lambda(
    H: np.ndarray, labels: np.ndarray, num_classes: int, lambdas=LAMBDA_GRID, val_fraction: float = 0.2, seed: int = 0
) -> float:
    """RanPAC's ridge parameter: min validation MSE against one-hot targets over ``lambdas``.

    The rows are split (seeded shuffle) into ``1 - val_fraction`` to fit and
    ``val_fraction`` to validate. All ``lambdas`` are evaluated from one
    decomposition of the fitting rows (thin SVD when they are fewer than the
    features, else an eigendecomposition of their Gram matrix), which is
    exactly ``(H^T H + lam I)^-1 H^T Y`` for every ``lam > 0``.
    """
    H = np.asarray(H, dtype=np.float64)
    n = H.shape[0]
    n_val = int(round(val_fraction * n))
    if n_val < 1 or n - n_val < 1 or len(lambdas) == 1:
        return float(lambdas[len(lambdas) // 2] if len(lambdas) != 1 else lambdas[0])
    order = np.random.default_rng(seed).permutation(n)
    fit, val = order[: n - n_val], order[n - n_val :]
    Y = np.eye(num_classes)[labels]
    Hf, Hv = H[fit], H[val]
    if Hf.shape[0] <= Hf.shape[1]:
        U, s, Vt = np.linalg.svd(Hf, full_matrices=False)
        A, B, shrink = Hv @ Vt.T, U.T @ Y[fit], lambda lam: s / (s * s + lam)
    else:
        e, V = np.linalg.eigh(Hf.T @ Hf)
        A, B, shrink = Hv @ V, V.T @ (Hf.T @ Y[fit]), lambda lam: 1.0 / (np.maximum(e, 0.0) + lam)
    mse = [float(np.mean(((A * shrink(lam)) @ B - Y[val]) ** 2)) for lam in lambdas]
    return float(lambdas[int(np.argmin(mse))])


def grow_ridge(head, feats: np.ndarray, labels: np.ndarray, num_classes: int, W_rand, hp: dict[str, Any],
               order: np.ndarray | None = None):
    """One task of RanPAC's ridge classifier: ``G += H^T H``, ``Q += H^T Y``, ``lam`` re-selected, re-solved.

    ``head`` is the current ``RidgeHead`` (``None`` before the first task); ``order`` is the pass the rows
    were embedded in (``distributed.last_order(loader)``; under torch.distributed it places each rank's rows);
    ``lam`` is chosen on this task's features only (as in RanPAC) from
    ``10^lambda_min_exp .. 10^lambda_max_exp`` and applied to the statistics
    accumulated over all tasks, in float64.
    """
    H = random_features(feats, W_rand).astype(np.float64)
    _, new = task_classes(distributed.all_classes(labels), num_classes)
    n = num_classes + len(new)
    m = H.shape[1]
    G = np.zeros((m, m)) if head is None else head.G
    Q = np.zeros((m, 0)) if head is None else head.Q
    counts = np.zeros(0, np.int64) if head is None else head.counts
    dG, dQ, dcounts = distributed.ridge_statistics(H, labels, n)  # summed over ranks under torch.distributed
    Q = np.column_stack([Q, np.zeros((m, len(new)))]) + dQ
    counts = np.append(counts, np.zeros(len(new), np.int64)) + dcounts
    lambdas = [10.0**k for k in range(hp["lambda_min_exp"], hp["lambda_max_exp"] + 1)]
    if distributed.is_distributed():
        lam = distributed.select_lambda(H, labels, n, lambdas, hp["val_fraction"], hp["seed"], select_lambda, order)
    else:
        lam = select_lambda(H, labels, n, lambdas, hp["val_fraction"], hp["seed"])
    # G is kept float32-exact (rounded once per task), so the bundle stores it in float32 and the device
    # solves exactly the system the learner solved.
    return RidgeHead((G + dG).astype(np.float32).astype(np.float64), Q, lam, counts, W_rand)

