"""Windowed two-sample Kolmogorov-Smirnov test: reference window against recent window."""

from __future__ import annotations

import math

import numpy as np

from .base import WARNING_LEVEL, DriftDetector, check_float, check_int, finite


def ks_statistic(a_sorted: np.ndarray, b_sorted: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs (same value as scipy's ks_2samp)."""
    both = np.concatenate((a_sorted, b_sorted))
    cdf_a = np.searchsorted(a_sorted, both, side="right") / a_sorted.size
    cdf_b = np.searchsorted(b_sorted, both, side="right") / b_sorted.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_pvalue(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value: the Kolmogorov distribution with Stephens' small-sample
    correction (Numerical Recipes' ``probks``), so no scipy is needed on the device."""
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * statistic
    if lam < 0.2:  # the series converges badly here and the answer is 1 to 1e-9
        return 1.0
    total, previous, sign = 0.0, 0.0, 2.0
    for j in range(1, 101):
        term = sign * math.exp(-2.0 * lam * lam * j * j)
        total += term
        if abs(term) <= 1e-3 * previous or abs(term) <= 1e-8 * total:
            return min(1.0, max(0.0, total))
        sign, previous = -sign, abs(term)
    return 1.0


class KSWindow(DriftDetector):
    """Two-sample KS test between a reference window and the most recent values.

    The first ``reference_size`` values fill the reference window; the next ``stat_size`` fill
    the recent window, and from then on every update tests the two (a fixed-size ring buffer
    each). A drift is signalled when the p-value is at most ``alpha``. The reference changes
    slowly: a value leaving the recent window enters it (replacing the oldest) at a rate of
    ``reference_rate``, and only while the test is far from significant (p > alpha ** WARNING_LEVEL).
    Unlike river's KSWIN, which compares the recent values with a random draw from the older
    part of one sliding window, this reference does not slide into a slow drift, and the test
    is deterministic.

    Parameters
    ----------
    alpha
        Significance level of the test.
    reference_size
        Values in the reference window.
    stat_size
        Values in the recent window.
    reference_rate
        Fraction of in-control values admitted into the reference.

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import KSWindow
    >>> rng = random.Random(12345)
    >>> stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
    >>> kswin = KSWindow(alpha=0.0001)
    >>> for i, x in enumerate(stream):
    ...     kswin.update(x)
    ...     if kswin.drift_detected:
    ...         print(f"Change detected at index {i}, input value: {x}")
    Change detected at index 1012, input value: 4
    """

    kind = "ks_window"
    _state_fields = (
        "_reference",
        "_sorted_reference",
        "_ref_pos",
        "_ref_filled",
        "_recent",
        "_recent_pos",
        "_recent_filled",
        "_credit",
        "_statistic",
        "_p_value",
    )

    def __init__(
        self,
        alpha: float = 0.0001,
        reference_size: int = 200,
        stat_size: int = 30,
        reference_rate: float = 0.01,
    ):
        super().__init__()
        check_float("alpha", alpha, above=0, below=1)
        check_int("reference_size", reference_size, 2)
        check_int("stat_size", stat_size, 2)
        check_float("reference_rate", reference_rate, at_least=0, at_most=1)
        self.alpha = alpha
        self.reference_size = reference_size
        self.stat_size = stat_size
        self.reference_rate = reference_rate
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._reference = np.zeros(self.reference_size)
        self._sorted_reference = np.zeros(self.reference_size)
        self._ref_pos = 0
        self._ref_filled = 0
        self._recent = np.zeros(self.stat_size)
        self._recent_pos = 0
        self._recent_filled = 0
        self._credit = 0.0
        self._statistic = 0.0
        self._p_value = 1.0

    @property
    def reference(self) -> np.ndarray:
        """The reference window, sorted (a copy)."""
        return self._sorted_reference.copy()

    @property
    def p_value(self) -> float:
        """p-value of the last test (1.0 before the first)."""
        return self._p_value

    @property
    def statistic(self) -> float:
        """KS statistic of the last test."""
        return self._statistic

    def update(self, x) -> None:
        x = finite(x)
        if self._drift_detected:
            self._reset()
        if self._ref_filled < self.reference_size:
            self._admit(x)
            return
        leaving = self._push_recent(x)
        if self._recent_filled < self.stat_size:
            return
        self._statistic = ks_statistic(self._sorted_reference, np.sort(self._recent))
        self._p_value = ks_pvalue(self._statistic, self.reference_size, self.stat_size)
        if self._p_value <= self.alpha:
            self._drift_detected = True
        elif leaving is not None and self._p_value > self.alpha**WARNING_LEVEL:
            self._maybe_admit(leaving)

    def _push_recent(self, x: float) -> float | None:
        leaving = float(self._recent[self._recent_pos]) if self._recent_filled == self.stat_size else None
        self._recent[self._recent_pos] = x
        self._recent_pos = (self._recent_pos + 1) % self.stat_size
        self._recent_filled = min(self._recent_filled + 1, self.stat_size)
        return leaving

    def _maybe_admit(self, x: float) -> None:
        # A credit counter rather than a random draw keeps the detector deterministic.
        self._credit += self.reference_rate
        if self._credit >= 1.0:
            self._credit -= 1.0
            self._admit(x)

    def _admit(self, x: float) -> None:
        self._reference[self._ref_pos] = x
        self._ref_pos = (self._ref_pos + 1) % self.reference_size
        self._ref_filled = min(self._ref_filled + 1, self.reference_size)
        if self._ref_filled == self.reference_size:
            self._sorted_reference = np.sort(self._reference)
