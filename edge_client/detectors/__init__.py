"""Drift detectors for the edge, one per module, all with the same river-style interface.

``build_detector(kind, **params)`` builds one by its registry name (as used in device config);
``detector_from_state(state)`` restores any detector from its ``to_state()`` snapshot.
"""

from __future__ import annotations

from .adwin import ADWIN
from .base import DriftAndWarningDetector, DriftDetector
from .ddm import DDM
from .ewma_confidence import EWMAConfidence
from .knn_distance import KNNDistancePageHinkley
from .ks_window import KSWindow
from .page_hinkley import PageHinkley
from .prediction_distribution import PredictionDistributionJS

DETECTORS: dict[str, type[DriftDetector]] = {
    cls.kind: cls
    for cls in (
        KNNDistancePageHinkley,
        PageHinkley,
        EWMAConfidence,
        PredictionDistributionJS,
        ADWIN,
        KSWindow,
        DDM,
    )
}


def build_detector(kind: str, **params) -> DriftDetector:
    """Build a detector by registry name, e.g. ``build_detector("page_hinkley", mode="up")``."""
    try:
        cls = DETECTORS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(DETECTORS)}, got {kind!r}") from None
    return cls(**params)


def detector_from_state(state: dict) -> DriftDetector:
    """Restore a detector of any kind from its ``to_state()`` snapshot."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in DETECTORS:
        raise ValueError(f"state kind must be one of {sorted(DETECTORS)}, got {kind!r}")
    return DETECTORS[kind].from_state(state)


__all__ = [
    "ADWIN",
    "DDM",
    "DETECTORS",
    "DriftAndWarningDetector",
    "DriftDetector",
    "EWMAConfidence",
    "KNNDistancePageHinkley",
    "KSWindow",
    "PageHinkley",
    "PredictionDistributionJS",
    "build_detector",
    "detector_from_state",
]
