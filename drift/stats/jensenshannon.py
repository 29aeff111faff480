"""Jensen-Shannon distance with natural logarithms (Evidently "jensenshannon"): drift when >= threshold.

Shares come from Evidently's binning (see _binning.py) without the empty-bin epsilon, and the
distance equals scipy.spatial.distance.jensenshannon(ref, cur) with its default base e, as
Evidently 0.7.23 calls it (base=None), bounded by [0, sqrt(ln 2)] ≈ [0, 0.833].
(benchmarks/drift_report.py found base 2 gave scores 1.20× Evidently's.)
"""

import numpy as np
from scipy import special

from ._binning import binned_shares
from ._columns import is_numeric

NAME = "jensenshannon"
KIND = "distance"
DEFAULT_THRESHOLD = 0.1


def statistic(reference: np.ndarray, current: np.ndarray, numerical: bool | None = None) -> tuple[float, float | None]:
    numerical = is_numeric(reference) if numerical is None else numerical
    return from_shares(*binned_shares(reference, current, numerical)), None


def from_shares(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    divergence = np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))
    return float(np.sqrt(divergence / 2.0))


def from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, None]:
    """The score on per-value counts over the union of values (how Evidently bins categorical columns)."""
    return from_shares(reference_counts / reference_counts.sum(), current_counts / current_counts.sum()), None


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score >= threshold)
