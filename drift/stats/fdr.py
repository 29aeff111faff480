"""Benjamini-Hochberg false-discovery-rate adjustment across the features of one report."""

import numpy as np


def benjamini_hochberg(p_values) -> np.ndarray:
    """Adjusted p-values (statsmodels' fdr_bh): min over j >= i of p_(j) * m / j, capped at 1.

    NaN p-values stay NaN and do not count in m, so an undefined test neither gains nor costs power.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    adjusted[finite] = _adjust(p[finite])
    return adjusted


def _adjust(p: np.ndarray) -> np.ndarray:
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranks = np.arange(1, p.size + 1)
    scaled = p[order] * p.size / ranks
    # Step-up: each adjusted value is the smallest scaled value at its rank or above.
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(monotone, 1.0)
    return adjusted
