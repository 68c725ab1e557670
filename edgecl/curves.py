"""A run's per-task accuracy as files: ``accuracy.csv`` and the curve ``accuracy.png``.

One CSV row per task: the classes seen so far, top-1 on all of them
(``top1_seen``, the run's ``metrics.per_task_overall``) and top-1 on each
earlier task's classes (``task_J``, a row of ``metrics.accuracy_matrix``;
empty for tasks not yet learned). The PNG draws the same numbers: the overall
curve and one thin curve per task.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

CSV_NAME = "accuracy.csv"
PNG_NAME = "accuracy.png"


def accuracy_rows(metrics: dict[str, Any], classes_seen: list[int] | None = None) -> list[dict[str, Any]]:
    """The CSV's rows as dicts (numbers as stored in ``metrics``; ``None`` for a task not yet learned)."""
    overall, matrix = metrics["per_task_overall"], metrics["accuracy_matrix"]
    n = len(overall)
    rows = []
    for t in range(n):
        row: dict[str, Any] = {"task": t + 1, "classes_seen": classes_seen[t] if classes_seen else None,
                               "top1_seen": overall[t]}
        row.update({f"task_{j + 1}": matrix[t][j] if j < len(matrix[t]) else None for j in range(n)})
        rows.append(row)
    return rows


def accuracy_csv(metrics: dict[str, Any], classes_seen: list[int] | None = None) -> str:
    """``accuracy.csv``'s text (full float precision, empty cells for missing or NaN values)."""
    rows = accuracy_rows(metrics, classes_seen)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["task", "classes_seen", "top1_seen"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v) if
                         isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def plot_accuracy(metrics: dict[str, Any], path: Path, classes_seen: list[int] | None = None, title: str = "") -> None:
    """Draw the per-task accuracy curves to the PNG ``path`` (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    overall, matrix = metrics["per_task_overall"], metrics["accuracy_matrix"]
    xs = classes_seen or list(range(1, len(overall) + 1))
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    for j in range(len(overall)):
        ax.plot(xs[j:], [matrix[t][j] for t in range(j, len(overall))], lw=0.8, alpha=0.5, marker=".",
                label=f"task {j + 1}" if len(overall) <= 10 else None)
    ax.plot(xs, overall, lw=2.2, color="black", marker="o", label="all seen classes")
    ax.set_xlabel("classes seen" if classes_seen else "task")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy after each task", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def write_accuracy_curves(run_dir: str | Path, metrics: dict[str, Any], classes_seen: list[int] | None = None,
                          title: str = "") -> tuple[Path, Path]:
    """Write ``accuracy.csv`` and ``accuracy.png`` into ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    csv_path, png_path = run_dir / CSV_NAME, run_dir / PNG_NAME
    csv_path.write_text(accuracy_csv(metrics, classes_seen), encoding="utf-8")
    plot_accuracy(metrics, png_path, classes_seen, title)
    return csv_path, png_path
