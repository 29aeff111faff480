"""First Wasserstein distance normed by the reference std (Evidently "wasserstein"): drift when >= threshold.

Same integral as scipy.stats.wasserstein_distance (area between the two empirical CDFs), divided
by max(np.std(reference), 0.001) like Evidently, so a constant reference does not divide by zero.
"""

import numpy as np

from ._columns import require_numeric

NAME = "wasserstein"
KIND = "distance"
DEFAULT_THRESHOLD = 0.1
MIN_NORM = 0.001


def statistic(reference: np.ndarray, current: np.ndarray) -> tuple[float, float | None]:
    require_numeric(reference, NAME)
    require_numeric(current, NAME)
    return raw_distance(reference, current) / max(float(np.std(reference)), MIN_NORM), None


def raw_distance(u: np.ndarray, v: np.ndarray) -> float:
    # Sorting each side first leaves two runs, which the stable (merge) sort joins in linear time.
    values = np.concatenate([np.sort(u), np.sort(v)])
    order = np.argsort(values, kind="stable")
    from_u = order < u.size
    # Inside a run of tied values the width to the next point is 0, so counting with cumsum
    # instead of searchsorted(side="right") changes no term of the sum.
    u_cdf = np.cumsum(from_u[:-1]) / u.size
    v_cdf = np.cumsum(~from_u[:-1]) / v.size
    return float(np.sum(np.abs(u_cdf - v_cdf) * np.diff(values[order])))


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score >= threshold)
