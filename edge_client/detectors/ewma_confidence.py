"""EWMA control chart on prediction confidence: the model grows unsure of what it sees."""

from __future__ import annotations

import math

from .base import WARNING_LEVEL, DriftDetector, ReferenceMoments, check_float, check_int, finite

MIN_STD = 1e-6


class EWMAConfidence(ReferenceMoments, DriftDetector):
    """Lower-sided EWMA chart (Roberts, 1959) on the confidence of each prediction.

    The chart's centre line and spread come from a reference mean and standard deviation,
    learned from the first ``min_samples`` confidences and refined afterwards with weight
    ``max(1/n, reference_rate)``, only while the chart is less than ``WARNING_LEVEL`` of the way
    down to its limit.
    A drift is signalled when the smoothed confidence falls below
    ``mean - n_sigma * sigma_ewma(t)``, with the exact time-varying EWMA standard deviation, so
    the first points after warm-up are not judged too harshly.

    Parameters
    ----------
    min_samples
        Confidences used to learn the reference before any drift can be signalled.
    smoothing
        Weight of each new confidence in the EWMA (lambda); small values see small shifts.
    n_sigma
        Width of the lower control limit, in standard deviations of the EWMA.
    reference_rate
        Slowest weight of a new confidence in the reference statistics.

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import EWMAConfidence
    >>> rng = random.Random(3)
    >>> sure = [min(1.0, rng.gauss(0.9, 0.05)) for _ in range(1000)]
    >>> unsure = [min(1.0, rng.gauss(0.8, 0.08)) for _ in range(500)]
    >>> chart = EWMAConfidence()
    >>> for i, confidence in enumerate(sure + unsure):
    ...     chart.update(confidence)
    ...     if chart.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1013
    """

    kind = "ewma_confidence"
    _state_fields = ("_n", "_mean", "_var", "_ewma", "_decay_sq")

    def __init__(
        self,
        min_samples: int = 200,
        smoothing: float = 0.02,
        n_sigma: float = 4.0,
        reference_rate: float = 0.0002,
    ):
        super().__init__()
        check_int("min_samples", min_samples, 2)
        check_float("smoothing", smoothing, above=0, at_most=1)
        check_float("n_sigma", n_sigma, above=0)
        check_float("reference_rate", reference_rate, at_least=0, at_most=1)
        self.min_samples = min_samples
        self.smoothing = smoothing
        self.n_sigma = n_sigma
        self.reference_rate = reference_rate
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._reset_reference()
        self._ewma = 0.0
        self._decay_sq = 1.0  # (1 - smoothing) ** (2 t), t = points charted so far

    @property
    def ewma(self) -> float:
        return self._ewma

    def lower_limit(self) -> float:
        """The current lower control limit."""
        lam = self.smoothing
        sigma = max(math.sqrt(self._var), MIN_STD) * math.sqrt(lam / (2 - lam) * (1 - self._decay_sq))
        return self._mean - self.n_sigma * sigma

    def update(self, x) -> None:
        x = finite(x)
        if self._drift_detected:
            self._reset()
        if self._n < self.min_samples:
            self._learn(x)
            self._ewma = self._mean
            return
        self._ewma += self.smoothing * (x - self._ewma)
        self._decay_sq *= (1 - self.smoothing) ** 2
        limit = self.lower_limit()
        if self._ewma < limit:
            self._drift_detected = True
        elif self._ewma >= self._mean - WARNING_LEVEL * (self._mean - limit):
            self._learn(x)
