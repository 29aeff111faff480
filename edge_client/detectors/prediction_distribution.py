"""Jensen-Shannon distance between recent predicted classes and a reference distribution."""

from __future__ import annotations

import math

import numpy as np

from .base import WARNING_LEVEL, DriftDetector, check_float, check_int

Z_FALSE_POSITIVE = 3.0902  # standard normal upper 1e-3 quantile: per-test level of the default threshold


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, so within [0, 1]) between two distributions."""
    # For a handful of classes, numpy's per-call overhead costs more than the arithmetic.
    divergence = _js_small(p.tolist(), q.tolist()) if p.size <= 32 else _js_large(p, q)
    return math.sqrt(max(0.0, divergence))


def _js_small(p: list[float], q: list[float]) -> float:
    total = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a > 0 else 0.0) + (b * math.log2(b / m) if b > 0 else 0.0)
    return total / 2


def _js_large(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    log_p = np.log2(p / m, out=np.zeros_like(p), where=p > 0)  # 0 * log 0 = 0
    log_q = np.log2(q / m, out=np.zeros_like(q), where=q > 0)
    return float(p @ log_p + q @ log_q) / 2


def default_threshold(n_classes: int, window_size: int, min_samples: int) -> float:
    """JS distance that a stationary stream exceeds on about 1 test in 1000.

    Without drift, 8 n JSD (in nats) is close to chi-square with n_classes - 1 degrees of
    freedom, with 1/n = 1/window_size + 1/min_samples since both distributions are estimates;
    the chi-square quantile uses the Wilson-Hilferty approximation (no scipy on the device).
    """
    k = n_classes - 1
    quantile = k * (1 - 2 / (9 * k) + Z_FALSE_POSITIVE * math.sqrt(2 / (9 * k))) ** 3
    n = 1 / (1 / window_size + 1 / min_samples)
    return min(1.0, math.sqrt(quantile / (8 * n * math.log(2))))


class PredictionDistributionJS(DriftDetector):
    """Drift in the mix of predicted classes, without labels.

    ``x`` is a predicted class index in ``[0, n_classes)``. The reference distribution is the
    class frequency of the first ``min_samples`` predictions; afterwards it moves towards each
    prediction with weight ``reference_rate``, only while the distance is below
    ``WARNING_LEVEL`` of the threshold. The last ``window_size`` predictions live in a fixed ring buffer; once it is
    full, a drift is signalled when its distribution is more than ``threshold`` away (JS
    distance) from the reference. The null distance grows with n_classes / window_size, so by
    default the threshold is derived from both (``default_threshold``: 0.25 for 10 classes).

    Parameters
    ----------
    n_classes
        Number of classes the model predicts.
    window_size
        Recent predictions compared with the reference.
    threshold
        JS distance (0..1) that signals a drift; None derives it from the other sizes.
    min_samples
        Predictions used to learn the reference before the window starts filling.
    reference_rate
        Weight of one in-control prediction in the reference distribution.

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import PredictionDistributionJS
    >>> rng = random.Random(11)
    >>> usual = rng.choices(range(4), weights=[4, 3, 2, 1], k=1000)
    >>> skewed = rng.choices(range(4), weights=[1, 1, 2, 6], k=500)
    >>> detector = PredictionDistributionJS(n_classes=4)
    >>> for i, label in enumerate(usual + skewed):
    ...     detector.update(label)
    ...     if detector.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1019
    """

    kind = "prediction_distribution"
    _state_fields = ("_n", "_reference", "_window", "_counts", "_pos", "_filled", "_distance")

    def __init__(
        self,
        n_classes: int,
        window_size: int = 100,
        threshold: float | None = None,
        min_samples: int = 500,
        reference_rate: float = 0.0002,
    ):
        super().__init__()
        check_int("n_classes", n_classes, 2)
        check_int("window_size", window_size, 1)
        check_int("min_samples", min_samples, 1)
        if threshold is None:
            threshold = default_threshold(n_classes, window_size, min_samples)
        check_float("threshold", threshold, above=0, at_most=1)
        check_float("reference_rate", reference_rate, at_least=0, at_most=1)
        self.n_classes = n_classes
        self.window_size = window_size
        self.threshold = threshold
        self.min_samples = min_samples
        self.reference_rate = reference_rate
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0  # predictions counted into the reference during warm-up
        self._reference = np.zeros(self.n_classes)  # counts during warm-up, then frequencies
        self._window = np.zeros(self.window_size, dtype=np.int64)
        self._counts = np.zeros(self.n_classes, dtype=np.int64)
        self._pos = 0
        self._filled = 0
        self._distance = 0.0

    @property
    def reference(self) -> np.ndarray:
        """Reference class frequencies (a copy)."""
        return self._reference / max(self._reference.sum(), 1.0)

    @property
    def distance(self) -> float:
        """JS distance of the last full window to the reference."""
        return self._distance

    def update(self, x) -> None:
        label = self._check_label(x)
        if self._drift_detected:
            self._reset()
        if self._n < self.min_samples:
            self._warm_up(label)
            return
        self._push(label)
        if self._filled < self.window_size:
            return
        self._distance = js_distance(self._counts / self.window_size, self._reference)
        if self._distance > self.threshold:
            self._drift_detected = True
        elif self._distance <= self.threshold * WARNING_LEVEL:
            self._reference *= 1 - self.reference_rate
            self._reference[label] += self.reference_rate

    def _check_label(self, x) -> int:
        if isinstance(x, bool) or not isinstance(x, int | np.integer) or not 0 <= x < self.n_classes:
            raise ValueError(f"x must be a class index in [0, {self.n_classes}), got {x!r}")
        return int(x)

    def _warm_up(self, label: int) -> None:
        self._reference[label] += 1
        self._n += 1
        if self._n == self.min_samples:
            self._reference /= self._n

    def _push(self, label: int) -> None:
        if self._filled == self.window_size:
            self._counts[self._window[self._pos]] -= 1
        else:
            self._filled += 1
        self._window[self._pos] = label
        self._counts[label] += 1
        self._pos = (self._pos + 1) % self.window_size
