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
    # One buffer holds both windows, each sorted in place, and few arrays are made after it: at
    # 100k values the page faults of fresh arrays cost as much as the arithmetic.
    values = np.concatenate([u, v], dtype=float)
    values[: u.size].sort()
    values[u.size :].sort()
    if u.size == v.size:
        return _mean_gap_of_order_statistics(values, u.size)
    return _area_between_cdfs(values, u.size, v.size)


def _mean_gap_of_order_statistics(values: np.ndarray, n: int) -> float:
    # Both quantile functions step at every 1/n, so the area between them is the mean gap.
    gaps = np.subtract(values[:n], values[n:], out=values[:n])
    return float(np.abs(gaps, out=gaps).sum()) / n


def _area_between_cdfs(values: np.ndarray, n: int, m: int) -> float:
    # The stable sort of two sorted runs merges them in linear time.
    order = np.argsort(values, kind="stable")
    merged = values[order]
    # From here the buffers of `values` and `order` are free; they take the widths and the walk.
    widths = np.subtract(merged[1:], merged[:-1], out=values[:-1])
    # F_u - F_v walks +1/n at each value of u and -1/m at each of v: in units of 1/(n*m), +m and -n,
    # an exact integer walk. Inside a run of tied values the width to the next point is 0, so the
    # order of ties changes no term of the sum.
    walk = order[:-1]
    np.multiply(walk < n, n + m, out=walk)
    walk -= n
    np.abs(np.cumsum(walk, out=walk), out=walk)
    # einsum, not np.dot: a multithreaded BLAS dot stalls for milliseconds on a busy machine.
    return float(np.einsum("i,i->", walk, widths)) / (n * m)


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score >= threshold)
