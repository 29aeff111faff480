"""Page-Hinkley on the KNN neighbour distance: samples far from the reference set."""

from __future__ import annotations

import math

import numpy as np

from .base import WARNING_LEVEL, DriftDetector, ReferenceMoments, check_float, check_int, finite
from .page_hinkley import cusum_step

# One glitched frame (black image, sensor dropout) gives a huge distance; clipping its
# standardised deviation means a drift needs several far samples, not one.
Z_CLIP = 5.0
MIN_STD = 1e-9


class KNNDistancePageHinkley(ReferenceMoments, DriftDetector):
    """Upward Page-Hinkley test on the distance from each sample to its nearest neighbours.

    ``x`` is the mean neighbour distance of one sample (or the array of its neighbour
    distances, which is averaged). When inputs move away from the classifier's reference set
    the distances grow. Distances are standardised by a reference mean and standard deviation,
    so ``delta`` and ``threshold`` are in reference standard deviations and one setting fits
    any embedding. The reference is learned from the first ``min_samples`` distances, then
    refined with weight ``max(1/n, reference_rate)`` only while the test is quiet.

    Parameters
    ----------
    min_samples
        Distances used to learn the reference before any drift can be signalled.
    delta
        Tolerated increase of the mean distance, in reference standard deviations.
    threshold
        Cumulative standardised increase that signals a drift.
    alpha
        Fading factor of the cumulative sum (1 = no fading).
    reference_rate
        Slowest weight of a new distance in the reference statistics.

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import KNNDistancePageHinkley
    >>> rng = random.Random(7)
    >>> near = [abs(rng.gauss(1.0, 0.2)) for _ in range(1000)]
    >>> far = [abs(rng.gauss(1.5, 0.3)) for _ in range(500)]
    >>> detector = KNNDistancePageHinkley()
    >>> for i, distance in enumerate(near + far):
    ...     detector.update(distance)
    ...     if detector.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1006
    """

    kind = "knn_distance"
    _state_fields = ("_n", "_mean", "_var", "_sum")

    def __init__(
        self,
        min_samples: int = 100,
        delta: float = 0.5,
        threshold: float = 10.0,
        alpha: float = 1.0,
        reference_rate: float = 0.0002,
    ):
        super().__init__()
        check_int("min_samples", min_samples, 2)
        check_float("delta", delta, at_least=0)
        check_float("threshold", threshold, above=0)
        check_float("alpha", alpha, above=0, at_most=1)
        check_float("reference_rate", reference_rate, at_least=0, at_most=1)
        self.min_samples = min_samples
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.reference_rate = reference_rate
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._reset_reference()
        self._sum = 0.0

    @property
    def statistic(self) -> float:
        return self._sum

    def update(self, x) -> None:
        x = finite(np.mean(x)) if np.ndim(x) else finite(x)
        if self._drift_detected:
            self._reset()
        if self._n < self.min_samples:
            self._learn(x)
            return
        z = (x - self._mean) / max(math.sqrt(self._var), MIN_STD)
        self._sum = cusum_step(self._sum, min(z, Z_CLIP), self.delta, self.alpha)
        if self._sum > self.threshold:
            self._drift_detected = True
        elif self._sum <= self.threshold * WARNING_LEVEL:
            self._learn(x)
