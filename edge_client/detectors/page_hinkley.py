"""Page-Hinkley test on a scalar feature statistic (brightness, contrast, blur, ...)."""

from __future__ import annotations

from .base import WARNING_LEVEL, DriftDetector, ReferenceMoments, check_choice, check_float, check_int, finite

MODES = ("up", "down", "both")


def cusum_step(total: float, deviation: float, delta: float, alpha: float) -> float:
    """One step of the Page-Hinkley sum in its CUSUM form.

    ``max(0, ...)`` equals river's "sum minus its running minimum" for alpha = 1, and keeps
    the state to one float instead of a sum and a minimum.
    """
    return max(0.0, alpha * total + deviation - delta)


class PageHinkley(ReferenceMoments, DriftDetector):
    """Page-Hinkley change detection on the mean of a scalar stream.

    The parameters mean what they mean in river's ``drift.PageHinkley``: ``delta`` is the
    magnitude of change tolerated, ``threshold`` the cumulative deviation (lambda) that signals
    a drift, ``alpha`` the fading factor of the cumulative sums, ``mode`` the direction(s)
    watched. Unlike river, deviations are measured from a *reference* mean: learned from the
    first ``min_samples`` values, then refined with weight ``max(1/n, reference_rate)`` but only
    while the test is quiet (below ``WARNING_LEVEL`` of the threshold). River's running mean absorbs the new
    concept while a drift builds up, which delays detection of slow drifts.

    Parameters
    ----------
    min_samples
        Values used to learn the reference before any drift can be signalled.
    delta
        Tolerated change of the mean, in the units of x.
    threshold
        Cumulative deviation that signals a drift, in the units of x.
    alpha
        Fading factor of the cumulative sums (1 = no fading).
    mode
        "up" (mean increases), "down" (decreases) or "both".
    reference_rate
        Slowest weight of a new value in the reference mean.

    Examples
    --------
    >>> import random
    >>> from edge_client.detectors import PageHinkley
    >>> rng = random.Random(12345)
    >>> stream = [rng.gauss(0.5, 0.1) for _ in range(1000)] + [rng.gauss(0.8, 0.1) for _ in range(500)]
    >>> ph = PageHinkley(delta=0.05, threshold=2.0, mode="up")
    >>> for i, x in enumerate(stream):
    ...     ph.update(x)
    ...     if ph.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1007
    """

    kind = "page_hinkley"
    _state_fields = ("_n", "_mean", "_var", "_sum_up", "_sum_down")

    def __init__(
        self,
        min_samples: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
        reference_rate: float = 0.0002,
    ):
        super().__init__()
        check_int("min_samples", min_samples, 1)
        check_float("delta", delta, at_least=0)
        check_float("threshold", threshold, above=0)
        check_float("alpha", alpha, above=0, at_most=1)
        check_choice("mode", mode, MODES)
        check_float("reference_rate", reference_rate, at_least=0, at_most=1)
        self.min_samples = min_samples
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self.reference_rate = reference_rate
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0  # values folded into the reference
        self._mean = 0.0
        self._var = 0.0
        self._sum_up = 0.0
        self._sum_down = 0.0

    @property
    def statistic(self) -> float:
        """The cumulative deviation compared with ``threshold``."""
        if self.mode == "up":
            return self._sum_up
        if self.mode == "down":
            return self._sum_down
        return max(self._sum_up, self._sum_down)

    def update(self, x) -> None:
        x = finite(x)
        if self._drift_detected:
            self._reset()
        if self._n < self.min_samples:
            self._learn(x)
            return
        deviation = x - self._mean
        self._sum_up = cusum_step(self._sum_up, deviation, self.delta, self.alpha)
        self._sum_down = cusum_step(self._sum_down, -deviation, self.delta, self.alpha)
        statistic = self.statistic
        if statistic > self.threshold:
            self._drift_detected = True
        elif statistic <= self.threshold * WARNING_LEVEL:
            self._learn(x)
