"""Population Stability Index (Evidently "psi"): sum((ref - cur) * ln(ref / cur)), drift when >= threshold.

Shares come from Evidently's binning (see _binning.py); empty bins get Evidently's epsilon
so the logarithm stays finite.
"""

import numpy as np

from ._binning import binned_shares, fill_zeroes
from ._columns import is_numeric

NAME = "psi"
KIND = "distance"
DEFAULT_THRESHOLD = 0.1


def statistic(reference: np.ndarray, current: np.ndarray, numerical: bool | None = None) -> tuple[float, float | None]:
    numerical = is_numeric(reference) if numerical is None else numerical
    return from_shares(*binned_shares(reference, current, numerical)), None


def from_shares(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    r, c = fill_zeroes(reference_shares), fill_zeroes(current_shares)
    return float(np.sum((r - c) * np.log(r / c)))


def from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, None]:
    """The score on per-value counts over the union of values (how Evidently bins categorical columns)."""
    return from_shares(reference_counts / reference_counts.sum(), current_counts / current_counts.sum()), None


def detects_drift(score: float, threshold: float) -> bool:
    return bool(score >= threshold)
