"""Z-test for the difference of two independent proportions (Evidently "z"): p-value, drift when p < threshold.

The first category in sorted order counts as 0 and every other as 1 (Evidently's encoding);
the pooled-variance z statistic gives a two-sided p-value 2 * (1 - Phi(|z|)). When both windows
hold the same single value the p-value is 1 (Evidently's special case).
"""

import numpy as np
from scipy import special

from ._columns import category_counts

NAME = "z"
KIND = "p_value"
DEFAULT_THRESHOLD = 0.05


def statistic(reference: np.ndarray, current: np.ndarray) -> tuple[float, float | None]:
    _, reference_counts, current_counts = category_counts(reference, current)
    return from_counts(reference_counts, current_counts)


def from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float | None]:
    if reference_counts.size == 1:
        return 0.0, 1.0
    n1, n2 = reference_counts.sum(), current_counts.sum()
    p1 = (n1 - reference_counts[0]) / n1
    p2 = (n2 - current_counts[0]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(z), float(2 * (1 - special.ndtr(np.abs(z))))


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score < threshold)
