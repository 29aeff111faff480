"""DDM, the Drift Detection Method (Gama et al., 2004), for when labels do arrive."""

from __future__ import annotations

import math

from .base import DriftAndWarningDetector, check_float, check_int


class DDM(DriftAndWarningDetector):
    """Drift Detection Method on a stream of prediction errors, as river's ``drift.binary.DDM``.

    ``x`` is 1 for a wrong prediction and 0 for a right one. With ``p`` the error rate so far and
    ``s = sqrt(p (1 - p) / n)``, the reference is the pair ``(p_min, s_min)`` where ``p + s`` was
    lowest. It can only move while the error rate is at its best, so it never learns from a
    drift. A warning is raised when ``p + s > p_min + warning_threshold * s_min`` and a drift
    when ``p + s > p_min + drift_threshold * s_min``; nothing is signalled in the first
    ``warm_start`` values. The state is five numbers, whatever the stream length.

    Parameters
    ----------
    warm_start
        Values seen before a warning or drift can be signalled.
    warning_threshold
        Warning level, in standard deviations (2 is about 95 % confidence).
    drift_threshold
        Drift level, in standard deviations (3 is about 99 % confidence).

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import DDM
    >>> rng = random.Random(42)
    >>> stream = rng.choices([0, 1], k=1000) + rng.choices([0, 1], k=1000, weights=[0.3, 0.7])
    >>> ddm = DDM()
    >>> for i, x in enumerate(stream):
    ...     ddm.update(x)
    ...     if ddm.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1334
    """

    kind = "ddm"
    _state_fields = ("_n", "_p", "_p_min", "_s_min", "_ps_min")

    def __init__(self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0):
        super().__init__()
        check_int("warm_start", warm_start, 0)
        check_float("warning_threshold", warning_threshold, above=0)
        check_float("drift_threshold", drift_threshold, above=0)
        if drift_threshold < warning_threshold:
            raise ValueError(f"drift_threshold must be >= warning_threshold, got {drift_threshold!r}")
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0
        self._p = 0.0
        self._p_min = 0.0
        self._s_min = 0.0
        self._ps_min = math.inf

    @property
    def error_rate(self) -> float:
        return self._p

    @property
    def reference(self) -> tuple[float, float]:
        """(p_min, s_min): the error rate and its deviation where p + s was lowest."""
        return self._p_min, self._s_min

    def update(self, x) -> None:
        if x not in (0, 1):
            raise ValueError(f"x must be 1 (error) or 0 (correct), got {x!r}")
        if self._drift_detected:
            self._reset()
        self._n += 1
        self._p += (1.0 / self._n) * (x - self._p)  # river's running mean, same rounding
        s = math.sqrt(self._p * (1 - self._p) / self._n)
        if self._n <= self.warm_start:
            return
        if self._p + s <= self._ps_min:
            self._p_min, self._s_min, self._ps_min = self._p, s, self._p + s
        level = self._p + s - self._p_min
        self._warning_detected = level > self.warning_threshold * self._s_min
        if level > self.drift_threshold * self._s_min:
            self._drift_detected = True
            self._warning_detected = False
