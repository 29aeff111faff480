"""Evidently's `get_binned_data` (src/evidently/calculations/stattests/utils.py): the shares JS and PSI compare.

Numerical columns whose reference has more than 20 distinct values are cut into
`np.histogram_bin_edges(reference + current, bins="sturges")`; everything else is
counted per value over the union of both windows. Shares are divided by the window size.
"""

import numpy as np

from ._columns import category_counts, n_unique

MAX_UNIQUE_FOR_VALUE_COUNTS = 20


def binned_shares(reference: np.ndarray, current: np.ndarray, numerical: bool) -> tuple[np.ndarray, np.ndarray]:
    if numerical and n_unique(reference, reference[:0], cap=MAX_UNIQUE_FOR_VALUE_COUNTS) is None:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        return np.histogram(reference, edges)[0] / reference.size, np.histogram(current, edges)[0] / current.size
    _, reference_counts, current_counts = category_counts(reference, current)
    return reference_counts / reference.size, current_counts / current.size


def fill_zeroes(shares: np.ndarray) -> np.ndarray:
    """Evidently's epsilon for empty bins (PSI only): min non-zero share / 1e6 when that is <= 1e-4, else 1e-4."""
    smallest = shares[shares != 0].min()
    epsilon = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return np.where(shares == 0, epsilon, shares)
