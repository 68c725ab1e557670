"""Class-incremental metrics: accuracy matrix, average incremental and last accuracy, forgetting."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class IncrementalMetrics:
    """``matrix[t][j]``: top-1 (%) on task ``j``'s test classes after learning task ``t`` (j <= t).

    ``overall[t]``: top-1 (%) on all test samples of classes seen up to task ``t``.
    """

    matrix: list[list[float]] = field(default_factory=list)
    overall: list[float] = field(default_factory=list)

    def record(self, y_true: np.ndarray, y_pred: np.ndarray, tasks: list[list[int]]) -> None:
        """Record the evaluation after task ``len(self.overall)`` on all seen test samples."""
        t = len(self.overall)
        self.overall.append(100.0 * float(np.mean(y_true == y_pred)))
        row = []
        for j in range(t + 1):
            mask = np.isin(y_true, tasks[j])
            row.append(100.0 * float(np.mean(y_true[mask] == y_pred[mask])) if mask.any() else float("nan"))
        self.matrix.append(row)

    @property
    def average_incremental(self) -> float:
        return float(np.mean(self.overall))

    @property
    def last(self) -> float:
        return self.overall[-1]

    @property
    def forgetting(self) -> float:
        """Mean over old tasks of (best earlier accuracy - final accuracy); 0 with one task."""
        if len(self.matrix) < 2:
            return 0.0
        final = self.matrix[-1]
        drops = [max(row[j] for row in self.matrix[j:-1]) - final[j] for j in range(len(self.matrix) - 1)]
        return float(np.mean(drops))

    def to_dict(self) -> dict:
        return {
            "per_task_overall": self.overall,
            "accuracy_matrix": self.matrix,
            "average_incremental": self.average_incremental,
            "last": self.last,
            "forgetting": self.forgetting,
        }
