"""The interface every edge detector shares, and the helpers that make its state durable.

Detectors follow river's shape: constructor arguments are stored under the same public names,
mutable state is created in ``_reset()``, ``update(x)`` returns nothing and the verdict is read
from ``drift_detected`` (true for the one update that signalled). As in river, the update after
a drift starts the detector afresh, so it re-learns its reference from the new concept.

Durability: ``to_state()`` returns a plain JSON-serialisable dict (constructor parameters plus
the attributes named in ``_state_fields``) and ``from_state()`` rebuilds a detector that
continues exactly where the saved one stopped. Every state field has a fixed size, so a
snapshot never grows with the length of the stream.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

STATE_VERSION = 1

# A detector learns its reference only while its test statistic is below this fraction of the
# way to the drift threshold: values that push the test towards a drift are likely from the
# new concept, and learning from them would hide the very drift being measured (the original
# TinyLCM did the opposite). 0.8 rather than 0.5: freezing an early, imprecise reference too
# readily turned its estimation error into false alarms on stationary benchmark streams.
WARNING_LEVEL = 0.8


class DriftDetector:
    """Base class: ``update(x) -> None`` and a ``drift_detected`` property."""

    kind = ""  # registry name, see edge_client.detectors.build_detector
    _state_fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._drift_detected = False

    def _reset(self) -> None:
        self._drift_detected = False

    @property
    def drift_detected(self) -> bool:
        """Whether the last update signalled a drift."""
        return self._drift_detected

    def update(self, x) -> None:  # pragma: no cover - every detector overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._param_names())
        return f"{type(self).__name__}({params})"

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def to_state(self) -> dict:
        """A JSON-serialisable snapshot: parameters and all mutable state."""
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "params": {name: encode(getattr(self, name)) for name in self._param_names()},
            "state": {name: encode(getattr(self, name)) for name in self._all_state_fields()},
        }

    @classmethod
    def from_state(cls, state: dict):
        """Rebuild a detector from ``to_state()`` output; it continues identically."""
        if state.get("kind") != cls.kind or state.get("version") != STATE_VERSION:
            raise ValueError(f"state is not a version {STATE_VERSION} {cls.kind!r} snapshot")
        detector = cls(**{name: decode(value) for name, value in state["params"].items()})
        for name in detector._all_state_fields():
            detector._restore_field(name, decode(state["state"][name]))
        return detector

    def _all_state_fields(self) -> tuple[str, ...]:
        return ("_drift_detected", *self._state_fields)

    def _restore_field(self, name: str, value) -> None:
        current = getattr(self, name)
        # A snapshot written with other sizes must not silently resize the buffers.
        if isinstance(current, np.ndarray) and value.shape != current.shape:
            raise ValueError(f"state field {name} has shape {value.shape}, expected {current.shape}")
        setattr(self, name, value)


class DriftAndWarningDetector(DriftDetector):
    """A detector that also reports a warning zone (``warning_detected``)."""

    def _reset(self) -> None:
        super()._reset()
        self._warning_detected = False

    @property
    def warning_detected(self) -> bool:
        """Whether the last update is in the warning zone."""
        return self._warning_detected

    def _all_state_fields(self) -> tuple[str, ...]:
        return ("_drift_detected", "_warning_detected", *self._state_fields)


def encode(value):
    """Turn a state value into JSON types; arrays keep their dtype, inf/nan survive strict JSON."""
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "data": value.tolist()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def decode(value):
    """Inverse of ``encode``."""
    if isinstance(value, dict) and "dtype" in value:
        return np.asarray(value["data"], dtype=value["dtype"])
    if isinstance(value, dict) and "float" in value:
        return float(value["float"])
    return value


# Argument checks: a bad value fails at construction, naming the argument, not deep in update().


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_float(name: str, value, *, above=None, at_least=None, below=None, at_most=None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    for bound, ok, word in (
        (above, lambda b: value > b, ">"),
        (at_least, lambda b: value >= b, ">="),
        (below, lambda b: value < b, "<"),
        (at_most, lambda b: value <= b, "<="),
    ):
        if bound is not None and not ok(bound):
            raise ValueError(f"{name} must be {word} {bound}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def finite(x) -> float:
    """The update value as a float; NaN or inf would poison every statistic from then on."""
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"x must be a finite number, got {x!r}")
    return value


def blend_moments(mean: float, var: float, n: int, x: float, rate: float) -> tuple[float, float]:
    """Fold ``x`` into a reference mean/variance (n counts x).

    The weight is 1/n (an exact running mean) until it falls to ``rate``; from then on the
    reference is an exponentially weighted one, so it can follow very slow, benign changes
    while memory stays constant.
    """
    weight = max(1.0 / n, rate)
    diff = x - mean
    mean += weight * diff
    var = (1.0 - weight) * (var + weight * diff * diff)
    return mean, var


class ReferenceMoments:
    """A slowly updated reference mean/variance for detectors that test against one.

    Expects ``reference_rate``; keeps ``_n``, ``_mean`` and ``_var`` (listed in the detector's
    ``_state_fields``) so the reference survives restarts.
    """

    def _reset_reference(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._var = 0.0

    @property
    def reference_mean(self) -> float:
        return self._mean

    @property
    def reference_std(self) -> float:
        return math.sqrt(self._var)

    def _learn(self, x: float) -> None:
        self._n += 1
        self._mean, self._var = blend_moments(self._mean, self._var, self._n, x, self.reference_rate)
