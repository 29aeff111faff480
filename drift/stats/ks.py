"""Two-sample Kolmogorov-Smirnov test (Evidently "ks"): p-value, drift when p <= threshold.

The p-value is scipy.stats.ks_2samp(method="auto"): exact (Hodges' lattice-path count) when both
samples have at most 10 000 values, else Smirnov's asymptotic kstwo distribution. Evidently
compares with `<=` for this test only (its other p-value tests use `<`).
"""

import numpy as np
from scipy import stats

from ._columns import require_numeric

NAME = "ks"
KIND = "p_value"
DEFAULT_THRESHOLD = 0.05


def statistic(reference: np.ndarray, current: np.ndarray) -> tuple[float, float | None]:
    require_numeric(reference, NAME)
    require_numeric(current, NAME)
    result = stats.ks_2samp(reference, current, method="auto")
    return float(result.statistic), float(result.pvalue)


def asymptotic_p_value(d: float, reference_size: int, current_size: int) -> float:
    """What ks_2samp(method="asymp") returns for a statistic `d`; used when only histograms are kept."""
    effective_n = reference_size * current_size / (reference_size + current_size)
    return float(np.clip(stats.kstwo.sf(d, np.round(effective_n)), 0.0, 1.0))


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score <= threshold)
