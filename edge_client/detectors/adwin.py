"""ADWIN: adaptive windowing over exponential-histogram buckets (Bifet & Gavaldà, 2007)."""

from __future__ import annotations

import math

import numpy as np

from .base import DriftDetector, check_float, check_int, finite


class ADWIN(DriftDetector):
    """Adaptive windowing, following river's ``drift.ADWIN`` step for step.

    The window is summarised by buckets: row ``i`` holds up to ``max_buckets`` buckets of
    ``2**i`` values each (total and variance), oldest first. Every ``clock`` updates, each cut
    of the window into an older part W0 and a newer part W1 is checked; when their means differ
    by more than the Hoeffding/Bernstein bound for ``delta``, the oldest bucket is dropped and a
    drift is signalled. As in river 0.26, the update after a drift starts with an empty window.

    Unlike river, the bucket rows are preallocated numpy arrays: at most ``max_rows`` rows, so
    the window covers at most about ``max_buckets * 2**max_rows`` values (over 80 million with
    the defaults) and memory never grows; past that the oldest bucket is forgotten.

    Parameters
    ----------
    delta
        Significance value of the cut test.
    clock
        Check for a cut every this many updates (1 = every update).
    max_buckets
        Buckets of each size kept before the two oldest are merged.
    min_window_length
        Smallest sub-window considered for a cut.
    grace_period
        No drift is signalled until the window holds more than this many values.
    max_rows
        Bucket rows preallocated (the memory bound).

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import ADWIN
    >>> rng = random.Random(12345)
    >>> stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
    >>> adwin = ADWIN()
    >>> for i, x in enumerate(stream):
    ...     adwin.update(x)
    ...     if adwin.drift_detected:
    ...         print(f"Change detected at index {i}, input value: {x}")
    Change detected at index 1023, input value: 4
    """

    kind = "adwin"
    _state_fields = ("_buckets", "_counts", "_n_rows", "_total", "_variance", "_width", "_tick")

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
        max_rows: int = 24,
    ):
        super().__init__()
        check_float("delta", delta, above=0, below=1)
        check_int("clock", clock, 1)
        check_int("max_buckets", max_buckets, 1)
        check_int("min_window_length", min_window_length, 1)
        check_int("grace_period", grace_period, 1)
        check_int("max_rows", max_rows, 2)
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self.max_rows = max_rows
        self._row_sizes = 2.0 ** np.arange(max_rows)  # constant, so not part of the state
        self._slots = np.arange(max_buckets + 1)
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        # (row, slot) -> (total, variance), oldest bucket first. One spare slot per row: a row
        # briefly holds max_buckets + 1 buckets before its two oldest merge. Slots past a row's
        # count hold stale values that are never read.
        self._buckets = np.zeros((self.max_rows, self.max_buckets + 1, 2))
        self._counts = np.zeros(self.max_rows, dtype=np.int64)
        self._n_rows = 1
        self._total = 0.0
        self._variance = 0.0  # sum of squared deviations, as in river
        self._width = 0.0
        self._tick = 0

    @property
    def width(self) -> int:
        """Number of values in the window."""
        return int(self._width)

    @property
    def total(self) -> float:
        return self._total

    @property
    def variance(self) -> float:
        return self._variance

    @property
    def estimation(self) -> float:
        """Mean of the window."""
        return self._total / self._width if self._width else 0.0

    def update(self, x) -> None:
        x = finite(x)
        if self._drift_detected:
            self._reset()
        self._insert(x)
        self._drift_detected = self._detect_change()

    def _insert(self, x: float) -> None:
        self._put(0, x, 0.0)
        self._width += 1.0
        if self._width > 1.0:
            diff = x - self._total / (self._width - 1.0)
            self._variance += (self._width - 1.0) * diff * diff / self._width
        self._total += x
        self._compress()

    def _compress(self) -> None:
        row = 0
        while self._counts[row] == self.max_buckets + 1:
            if row + 1 == self.max_rows:
                self._delete_oldest()  # the memory bound: forget instead of growing a row
                return
            self._merge_oldest_pair(row)
            if self._counts[row + 1] <= self.max_buckets:
                return
            row += 1

    def _merge_oldest_pair(self, row: int) -> None:
        size = float(self._row_sizes[row])
        (t0, v0), (t1, v1) = self._buckets[row, :2].tolist()
        mu0, mu1 = t0 / size, t1 / size
        merged_var = v0 + v1 + size * 0.5 * (mu0 - mu1) * (mu0 - mu1)
        self._n_rows = max(self._n_rows, row + 2)
        self._put(row + 1, t0 + t1, merged_var)
        self._drop_front(row, 2)

    def _put(self, row: int, total: float, variance: float) -> None:
        self._buckets[row, self._counts[row]] = (total, variance)
        self._counts[row] += 1

    def _drop_front(self, row: int, n: int) -> None:
        count = self._counts[row]
        self._buckets[row, : count - n] = self._buckets[row, n:count]
        self._counts[row] -= n

    def _delete_oldest(self) -> None:
        row = self._n_rows - 1
        size = float(self._row_sizes[row])
        total, var = self._buckets[row, 0].tolist()
        mu = total / size
        self._width -= size
        self._total -= total
        mu_window = self._total / self._width
        self._variance -= var + size * self._width * (mu - mu_window) * (mu - mu_window) / (size + self._width)
        self._drop_front(row, 1)
        if self._counts[row] == 0:
            self._n_rows -= 1

    def _detect_change(self) -> bool:
        self._tick += 1
        if self._tick % self.clock or self._width <= self.grace_period:
            return False
        detected = False
        # As in river: drop the oldest bucket and re-check until no cut is significant.
        while self._has_cut():
            detected = True
            self._delete_oldest()
        return detected

    def _has_cut(self) -> bool:
        rows = slice(self._n_rows - 1, None, -1)
        used = self._slots < self._counts[rows, None]  # oldest row first, oldest bucket first
        totals = self._buckets[rows, :, 0][used]
        sizes = np.broadcast_to(self._row_sizes[rows, None], used.shape)[used]
        # Sequential accumulations reproduce river's running sums bit for bit; the last
        # bucket is not a cut point (W1 would be empty).
        n0 = np.cumsum(sizes)[:-1]
        u0 = np.cumsum(totals)[:-1]
        n1 = self._width - n0
        u1 = np.subtract.accumulate(np.concatenate(([self._total], totals)))[1:-1]
        return bool(np.any(self._significant(n0, n1, u0 / n0 - u1 / n1)))

    def _significant(self, n0: np.ndarray, n1: np.ndarray, delta_mean: np.ndarray) -> np.ndarray:
        mwl = self.min_window_length
        delta_prime = math.log(2 * math.log(self._width) / self.delta)
        # Cuts with a sub-window under min_window_length divide by zero or less; they are masked
        # out. A variance made negative by rounding gives NaN, hence no cut, as in river.
        with np.errstate(divide="ignore", invalid="ignore"):
            m_recip = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0)
            epsilon = np.sqrt(2.0 * m_recip * (self._variance / self._width) * delta_prime)
            epsilon += 2.0 / 3.0 * delta_prime * m_recip
            return (n1 >= mwl) & (n0 >= mwl) & (np.abs(delta_mean) > epsilon)
