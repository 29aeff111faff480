"""Pearson chi-square goodness of fit (Evidently "chisquare"): p-value, drift when p < threshold.

Observed: current counts per category. Expected: reference counts scaled to the current size,
exactly as Evidently feeds scipy.stats.chisquare. A category absent from the reference has an
expected count of 0, so the statistic is inf and the p-value 0 (drift).
"""

import numpy as np
from scipy import special

from ._columns import category_counts

NAME = "chisquare"
KIND = "p_value"
DEFAULT_THRESHOLD = 0.05


def statistic(reference: np.ndarray, current: np.ndarray) -> tuple[float, float | None]:
    _, reference_counts, current_counts = category_counts(reference, current)
    return from_counts(reference_counts, current_counts)


def from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float | None]:
    expected = reference_counts * (current_counts.sum() / reference_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = float(np.sum((current_counts - expected) ** 2 / expected))
    return chi2, float(special.chdtrc(reference_counts.size - 1, chi2))


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score < threshold)
