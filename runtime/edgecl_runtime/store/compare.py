"""What differs between two bundles: classes added, removed, and changed (``edgecl diff``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .reads import State, read_state

# Statistics closer than this count as equal (a merge and a one-device replay differ by float rounding only).
RTOL, ATOL = 1e-5, 1e-6


def diff(a: str | Path, b: str | Path, rtol: float = RTOL, atol: float = ATOL) -> dict[str, Any]:
    """Classes of bundle ``b`` compared with bundle ``a``.

    ``added``: in ``b`` only; ``removed``: in ``a`` only; ``changed``: in both,
    with a different example count or per-class statistics (``Head.class_statistics``:
    prototype, mean and scatter, ridge feature sums) that differ beyond
    ``rtol``/``atol``; ``unchanged``: how many classes are the same. When the head
    kinds differ only the example counts are compared.
    """
    sa, sb = read_state(a, verify="state"), read_state(b, verify="state")
    in_a, in_b = {n: i for i, n in enumerate(sa.classes)}, {n: i for i, n in enumerate(sb.classes)}
    same_kind = sa.manifest["head"]["kind"] == sb.manifest["head"]["kind"]
    changed, unchanged = [], 0
    for name in sa.classes:
        if name not in in_b:
            continue
        change = _class_change(sa, sb, in_a[name], in_b[name], same_kind, rtol, atol)
        if change is None:
            unchanged += 1
        else:
            changed.append({"class": name, **change})
    return {
        "a": str(a), "b": str(b),
        "same_export": sa.bundle_id == sb.bundle_id,
        "head_kind": [sa.manifest["head"]["kind"], sb.manifest["head"]["kind"]],
        "classes": [len(sa.classes), len(sb.classes)],
        "added": [{"class": n, "examples": int(sb.head.counts[i])} for n, i in in_b.items() if n not in in_a],
        "removed": [{"class": n, "examples": int(sa.head.counts[i])} for n, i in in_a.items() if n not in in_b],
        "changed": changed,
        "unchanged": unchanged,
    }


def _class_change(sa: State, sb: State, i: int, j: int, same_kind: bool, rtol: float, atol: float) -> dict | None:
    """How class ``i`` of ``a`` and class ``j`` of ``b`` differ (None: they do not)."""
    na, nb = int(sa.head.counts[i]), int(sb.head.counts[j])
    stats_a = sa.head.class_statistics(i) if same_kind else {}
    stats_b = sb.head.class_statistics(j) if same_kind else {}
    worst, differs = 0.0, na != nb
    for key in stats_a.keys() & stats_b.keys():
        x, y = np.asarray(stats_a[key], np.float64), np.asarray(stats_b[key], np.float64)
        if x.shape != y.shape:
            differs = True
            continue
        worst = max(worst, float(np.max(np.abs(x - y), initial=0.0)))
        differs = differs or not np.allclose(x, y, rtol=rtol, atol=atol)
    if not differs:
        return None
    return {"examples": [na, nb], "max_abs_difference": worst}
