"""Inference pipelines: extract -> transform -> classify -> monitors -> log, and the adaptive one.

``InferencePipeline.process(image)`` runs one sample through:

1. ``extractor.extract(image)`` -> (model probabilities, feature vector);
2. ``transform.transform(features)`` (scaler + PCA; ``None`` = features as they are);
3. ``knn.predict`` -> label, confidence, probabilities, neighbour distances;
4. every monitor's ``update`` with its signal (``SIGNALS``):

   ======================== ================================================================
   monitor name             signal it is fed
   ======================== ================================================================
   knn_distance             mean distance to the k nearest references
   ewma_confidence          the KNN's confidence in its label
   prediction_distribution  the predicted label
   page_hinkley             the image statistic configured for it (``image_statistic``,
   ks_window                default ``brightness``; any of ``extractors.STATISTICS_NAMES``,
   adwin                    from ``extractors.image_statistics``)
   ======================== ================================================================

   Any other name (including ``ddm``, which needs ground-truth labels) is a ``ValueError`` at
   construction. Monitors get their signal whatever happens: detectors themselves keep their
   reference statistics still while a drift builds up.
5. a ``prediction`` record in the store for every sample (``uncertain: true``, with its
   features, when the confidence lies in ``confidence_band`` = [low, high): those go to
   labeling), and a ``drift_event`` record for each monitor that fired (detector name and kind,
   its signal and last value, its score and parameters, the sample window since its previous
   event, the model version);
6. ``telemetry.record_inference(seconds)``.

``process_features(features, probabilities=None, statistics=None)`` starts at step 2 (used by
benchmarks to time everything but the extractor). Image-statistic monitors are fed from
``statistics`` (a dict like ``image_statistics()`` returns); without it they are not updated.

``AdaptivePipeline`` adds the quarantine, the heuristic adapter, the adaptation tracker and the
state manager (see quarantine.py, adaptation.py, state.py).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_client import store as store_kinds
from edge_client.adaptation import AdaptationTracker, HeuristicAdapter, reference_distance_threshold
from edge_client.datagen import load_digits_sample
from edge_client.detectors import build_detector
from edge_client.extractors import (
    MODELS_DIR,
    STATISTICS_NAMES,
    TFLiteExtractor,
    image_statistics,
    shipped_model_paths,
)
from edge_client.knn import KNN, balanced_subset
from edge_client.quarantine import Quarantine
from edge_client.state import StateManager
from edge_client.transforms import PCA, FeatureTransform, StandardScaler

DISTANCE, CONFIDENCE, LABEL, IMAGE = "distance", "confidence", "label", "image_statistic"
SIGNALS = {
    "knn_distance": DISTANCE,
    "ewma_confidence": CONFIDENCE,
    "prediction_distribution": LABEL,
    "page_hinkley": IMAGE,
    "ks_window": IMAGE,
    "adwin": IMAGE,
}
# The monitors built when the config names none.
DEFAULT_MONITORS = ("knn_distance", "ewma_confidence", "prediction_distribution", "page_hinkley")
# Settings in config.detectors that are the pipeline's, not the detector constructor's.
PIPELINE_SETTINGS = ("enabled", "statistic")
TOP_K = 10
BOOTSTRAP_SIZE = 200
# bootstrap() of the shipped model, computed once by tools/build_reference.py: a device without a
# bundle loads it instead of extracting and fitting at start-up (time and peak memory).
SHIPPED_REFERENCE = MODELS_DIR / "digits_reference"
BOOTSTRAP_COMPONENTS = 32
# What a bundle folder holds for the pipeline (both written by the server, or by save_bundle).
BUNDLE_TRANSFORM, BUNDLE_KNN = "transform.json", "knn.npz"
# Score-like read-only properties a detector may have, reported with its drift event.
SCORE_ATTRIBUTES = ("statistic", "distance", "p_value", "ewma", "estimation", "reference_mean", "width")


@dataclass(frozen=True)
class PredictionResult:
    label: int
    confidence: float
    probabilities: np.ndarray
    features: np.ndarray  # transformed
    neighbour_distance: float  # mean distance to the k nearest references
    drift: list[str] = field(default_factory=list)  # monitors that fired on this sample
    uncertain: bool = False  # confidence inside the band: sent to labeling


class InferencePipeline:
    def __init__(
        self,
        extractor,
        transform,
        knn: KNN,
        monitors: dict,
        *,
        store=None,
        telemetry=None,
        confidence_band=(0.4, 0.7),
        model_version: str = "",
        image_statistic: str | dict[str, str] = "brightness",
    ):
        low, high = (float(v) for v in confidence_band)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"confidence_band must be (low, high) with 0 <= low < high <= 1, got {confidence_band}")
        self.extractor, self.transform, self.knn = extractor, transform, knn
        self.store, self.telemetry = store, telemetry
        self.confidence_band, self.model_version = (low, high), model_version
        self.monitors = dict(monitors)
        self.statistics = _statistic_per_monitor(self.monitors, image_statistic)
        self.samples_seen = 0
        self._window_start = dict.fromkeys(self.monitors, 0)

    # --- construction from the device config ----------------------------------------------------

    @classmethod
    def from_config(cls, config, *, store=None, telemetry=None, **kwargs):
        extractor = _extractor(config)
        bundle = _current_bundle(config)
        transform, knn = load_bundle(bundle.path) if bundle else initial_reference(config, extractor)
        monitors, statistics = monitors_from_config(config.detectors, n_classes=knn.n_classes)
        return cls(
            extractor,
            transform,
            knn,
            monitors,
            store=store,
            telemetry=telemetry,
            confidence_band=tuple(config.inference.confidence_band),
            model_version=bundle.version if bundle else "",
            image_statistic=statistics,
            **kwargs,
        )

    def use_bundle(self, transform, knn: KNN, model_version: str) -> None:
        """Serve another model (a bundle from the server). The monitors start afresh: their
        references were learned on the old model's distances and confidences, and a model switch
        is no drift of the data."""
        self.transform, self.knn, self.model_version = transform, knn, model_version
        for monitor in self.monitors.values():
            monitor._reset()
        self._window_start = dict.fromkeys(self.monitors, self.samples_seen)

    # --- running --------------------------------------------------------------------------------

    def process(self, image) -> PredictionResult:
        started = time.perf_counter()
        try:
            probabilities, features = self.extractor.extract(image)
        except Exception:
            if self.telemetry is not None:
                self.telemetry.record_error()  # reported as the heartbeat's error_rate
            raise
        statistics = image_statistics(image)  # logged with the prediction: the server tests them for drift
        return self._run(features, probabilities, statistics, image, started)

    def process_features(self, features, probabilities=None, statistics=None) -> PredictionResult:
        return self._run(features, probabilities, statistics, None, time.perf_counter())

    def _run(self, features, probabilities, statistics, image, started) -> PredictionResult:
        transformed = self.transform.transform(features) if self.transform is not None else np.asarray(features)
        prediction = self.knn.predict(transformed)
        distance = float(prediction.distances.mean())
        fired = self._update_monitors(prediction.label, prediction.confidence, distance, statistics)
        low, high = self.confidence_band
        result = PredictionResult(
            prediction.label,
            prediction.confidence,
            prediction.probabilities,
            transformed,
            distance,
            fired,
            low <= prediction.confidence < high,
        )
        self.samples_seen += 1
        latency = time.perf_counter() - started  # inference only: logging is not the model's latency
        self._after(result, probabilities, image, latency, statistics)
        if self.telemetry is not None:
            self.telemetry.record_inference(latency)
        return result

    def _update_monitors(self, label, confidence, distance, statistics) -> list[str]:
        fired = []
        signals = {DISTANCE: distance, CONFIDENCE: confidence, LABEL: label}
        for name, monitor in self.monitors.items():
            signal = SIGNALS[name]
            if signal == IMAGE:
                if statistics is None:
                    continue
                value = statistics[self.statistics[name]]
            else:
                value = signals[signal]
            monitor.update(value)
            if monitor.drift_detected:
                fired.append(name)
        return fired

    # --- logging --------------------------------------------------------------------------------

    def _after(self, result: PredictionResult, probabilities, image, latency: float, statistics=None) -> dict[str, str]:
        """Log the sample and its drift events; returns {monitor name: drift event id}."""
        if self.store is None:
            return {}
        self.store.append(store_kinds.PREDICTION, self._prediction_payload(result, probabilities, latency, statistics))
        events = {}
        for name in result.drift:
            events[name] = self.store.append(store_kinds.DRIFT_EVENT, self._drift_payload(name, result))
            self._window_start[name] = self.samples_seen
        return events

    def _prediction_payload(self, result: PredictionResult, probabilities, latency: float, statistics=None) -> dict:
        order = np.argsort(result.probabilities)[::-1][:TOP_K]
        payload = {
            "model_version": self.model_version,
            "label": str(result.label),
            "confidence": round(float(result.confidence), 6),
            "probabilities": {
                str(i): round(float(result.probabilities[i]), 6) for i in order if result.probabilities[i]
            },
            "latency_ms": round(latency * 1000.0, 3),
            "neighbour_distance": round(result.neighbour_distance, 6),
            **({"image_stats": _image_stats_payload(statistics)} if statistics else {}),
            "uncertain": result.uncertain,
        }
        if result.uncertain:
            # Labeling needs something to look at; only uncertain samples carry their features.
            payload["features"] = _base64_float32(result.features)
        if probabilities is not None:
            probabilities = np.asarray(probabilities)
            payload["model_label"] = str(int(probabilities.argmax()))
            payload["model_confidence"] = round(float(probabilities.max()), 6)
        if result.drift:
            payload["drift"] = list(result.drift)
        return payload

    def _drift_payload(self, name: str, result: PredictionResult) -> dict:
        monitor = self.monitors[name]
        state = monitor.to_state()
        return {
            "detector": name,
            "kind": monitor.kind,
            "signal": self.statistics.get(name, SIGNALS[name]),
            "scores": _scores(monitor),
            "params": state["params"],
            "window": {"start_sample": self._window_start[name], "end_sample": self.samples_seen - 1},
            "model_version": self.model_version,
            "label": str(result.label),
            "confidence": float(result.confidence),
            "neighbour_distance": result.neighbour_distance,
        }


class AdaptivePipeline(InferencePipeline):
    """InferencePipeline + quarantine of flagged samples, heuristic adaptation, versioned state.

    A sample is quarantined when a monitor fired on it or its mean neighbour distance is above
    ``far_distance`` (default: ``reference_distance_threshold`` of the reference, times
    ``far_factor``). ``use_bundle`` swaps the model: the quarantine empties (its features are in
    the old model's space; the outbox still ships them) and the far limit and the adapter follow
    the new reference.
    Every ``adapt_every`` quarantined samples (0: only when ``adapt()`` is called) the adapter
    runs: the state is snapshotted first, each accepted group is recorded by the tracker with
    that version, and the new state is snapshotted after. ``rollback(version)`` restores any
    kept version; ``rollback_adaptation(id)`` the state from just before that adaptation.
    """

    def __init__(
        self,
        extractor,
        transform,
        knn: KNN,
        monitors: dict,
        *,
        quarantine: Quarantine,
        state: StateManager,
        adapter: HeuristicAdapter | None = None,
        tracker: AdaptationTracker | None = None,
        far_distance: float | None = None,
        far_factor: float = 1.5,
        adapt_every: int = 50,
        **kwargs,
    ):
        super().__init__(extractor, transform, knn, monitors, **kwargs)
        self.quarantine, self.state = quarantine, state
        self.adapter = adapter or HeuristicAdapter.for_reference(knn)
        self.adapter.knn = knn
        self.tracker = tracker or AdaptationTracker(Path(state.dir) / "adaptations.json")
        self.far_factor = float(far_factor)
        self._fixed_far = far_distance is not None
        self.far_distance = float(far_distance) if self._fixed_far else self._far_limit(knn)
        self.adapt_every = int(adapt_every)
        self._since_adapt = 0

    def _far_limit(self, knn: KNN) -> float:
        return reference_distance_threshold(knn, factor=self.far_factor)

    @classmethod
    def from_config(cls, config, *, store=None, telemetry=None, **kwargs):
        """As InferencePipeline.from_config, resuming from the latest saved state if there is one."""
        state = StateManager(config.path("state"))
        quarantine = Quarantine.from_config(config, store=store)
        pipeline = super().from_config(
            config,
            store=store,
            telemetry=telemetry,
            quarantine=quarantine,
            state=state,
            far_factor=config.quarantine.far_factor,
        )
        quarantine.model_version = pipeline.model_version
        # Adapted state belongs to the bundle it was adapted from: a new bundle starts afresh.
        if state.latest() is not None:
            snapshot = state.restore()
            if snapshot.meta.get("model_version") == pipeline.model_version:
                pipeline._apply(snapshot)
        return pipeline

    def _after(self, result: PredictionResult, probabilities, image, latency: float, statistics=None) -> dict[str, str]:
        events = super()._after(result, probabilities, image, latency, statistics)
        reasons = list(result.drift) + (["far"] if result.neighbour_distance > self.far_distance else [])
        if reasons:
            self.quarantine.add(
                result.features,
                label=result.label,
                confidence=result.confidence,
                distance=result.neighbour_distance,
                reasons=reasons,
                image=image,
                event_id=next(iter(events.values()), None),
            )
            self._since_adapt += 1
            if self.adapt_every and self._since_adapt >= self.adapt_every:
                self.adapt()
        return events

    def use_bundle(self, transform, knn: KNN, model_version: str) -> None:
        super().use_bundle(transform, knn, model_version)
        # Quarantined features live in the old model's space (often of another dimension): the
        # adapter must never mix them with the new reference.
        self.quarantine.clear()
        self.quarantine.model_version = model_version
        old = self.adapter  # its radius and spread were scaled to the old reference; its rules stay
        self.adapter = HeuristicAdapter.for_reference(
            knn, min_group_size=old.min_group_size, min_agreement=old.min_agreement
        )
        if not self._fixed_far:
            self.far_distance = self._far_limit(knn)
        self._since_adapt = 0

    def apply_verdict(self, event_id: str, status: str) -> int:
        """The server's verdict on one of this device's drift events (the sync client calls it).

        A rejected event was a false alarm: its quarantined samples are released so they never
        feed the adapter. A confirmed event keeps them (the server queues them for labeling).
        Returns how many samples were released.
        """
        if status != "rejected":
            return 0
        return self.quarantine.remove([s.id for s in self.quarantine.samples() if s.event_id == event_id])

    def snapshot(self, meta=None) -> int:
        return self.state.snapshot(
            self.knn, self.transform, self.monitors, {"model_version": self.model_version, **(meta or {})}
        )

    def adapt(self) -> list:
        """Run the adapter over the quarantine; returns the tracker entries it added."""
        self._since_adapt = 0
        decisions = self.adapter.decide(self.quarantine.features(), [s.id for s in self.quarantine.samples()])
        if not any(decision.accepted for decision in decisions):
            self.adapter.decisions = decisions
            return []
        before = self.snapshot({"reason": "before adaptation"})
        decisions = self.adapter.adapt(self.quarantine)
        entries = [self.tracker.record(decision, before) for decision in decisions if decision.accepted]
        self.snapshot({"reason": "after adaptation", "adaptations": [entry.id for entry in entries]})
        return entries

    def rollback(self, version: int | None = None) -> int:
        """Restore the KNN, transform and monitors of a kept state version (default: latest)."""
        snapshot = self.state.restore(version)
        self._apply(snapshot)
        return snapshot.version

    def _apply(self, snapshot) -> None:
        self.knn, self.transform = snapshot.knn, snapshot.transform
        self.adapter.knn = snapshot.knn
        self.monitors = {name: snapshot.detectors.get(name, monitor) for name, monitor in self.monitors.items()}

    def rollback_adaptation(self, adaptation_id: str | None = None) -> int:
        """Undo an adaptation (default: the latest one not undone) and every one after it."""
        entry = self.tracker.get(adaptation_id) if adaptation_id else self.tracker.last()
        if entry is None or entry.version_before is None:
            raise ValueError("no adaptation to roll back")
        version = self.rollback(entry.version_before)
        self.tracker.mark_rolled_back(entry)
        return version


# --- helpers ------------------------------------------------------------------------------------


def _statistic_per_monitor(monitors: dict, image_statistic) -> dict[str, str]:
    """{monitor name: image statistic} for the image-statistic monitors; checks every name."""
    statistics = {}
    for name in monitors:
        if name not in SIGNALS:
            raise ValueError(f"unknown monitor {name!r}; expected one of {sorted(SIGNALS)} (ddm needs labels)")
        if SIGNALS[name] == IMAGE:
            chosen = image_statistic.get(name, "brightness") if isinstance(image_statistic, dict) else image_statistic
            if chosen not in STATISTICS_NAMES:
                raise ValueError(f"monitor {name!r}: statistic must be one of {STATISTICS_NAMES}, got {chosen!r}")
            statistics[name] = chosen
    return statistics


def monitors_from_config(detectors: dict, *, n_classes: int) -> tuple[dict, dict[str, str]]:
    """(monitors, {name: image statistic}) from config.detectors; the defaults when it is empty."""
    settings = detectors or {name: {} for name in DEFAULT_MONITORS}
    monitors, statistics = {}, {}
    for name, options in settings.items():
        options = dict(options)
        if not options.pop("enabled", True):
            continue
        if name not in SIGNALS:
            raise ValueError(f"detectors.{name}: not a label-free monitor; expected one of {sorted(SIGNALS)}")
        statistics[name] = options.pop("statistic", "brightness")
        if name == "prediction_distribution":
            options.setdefault("n_classes", n_classes)
        monitors[name] = build_detector(name, **options)
    return monitors, statistics


def _extractor(config):
    path = config.model.extractor_path
    if not path:
        return TFLiteExtractor(*shipped_model_paths())
    path = config.path(path)
    return TFLiteExtractor(path, path.with_suffix(".json"))


def _current_bundle(config):
    from edge_client.bundles import BundleManager  # the bundle folder only: no network here

    manager = BundleManager(config.path(config.model.bundle_dir))
    return manager.current()


def load_bundle(path) -> tuple[FeatureTransform | None, KNN]:
    """(transform, knn) from a bundle folder: ``transform.json`` (optional) and ``knn.npz``."""
    import json

    path = Path(path)
    transform_file = path / BUNDLE_TRANSFORM
    transform = None
    if transform_file.is_file():
        transform = FeatureTransform.from_params(json.loads(transform_file.read_text(encoding="utf-8")))
    with np.load(path / BUNDLE_KNN, allow_pickle=False) as arrays:
        knn = KNN.from_state({key: arrays[key] for key in arrays.files})
    return transform, knn


def initial_reference(config, extractor) -> tuple[FeatureTransform | None, KNN]:
    """The reference to run with before the server sends a bundle."""
    if not config.model.extractor_path and (SHIPPED_REFERENCE / BUNDLE_KNN).is_file():
        return load_bundle(SHIPPED_REFERENCE)
    return bootstrap(extractor)


def bootstrap(extractor, size: int = BOOTSTRAP_SIZE, n_components: int = BOOTSTRAP_COMPONENTS, k: int = 5):
    """(transform, knn) fitted on the device from ``size`` balanced samples of the shipped digits'
    training split: for running before the server has sent a bundle."""
    digits = load_digits_sample()
    train = np.setdiff1d(np.arange(len(digits.labels)), digits.test_index)
    chosen = train[balanced_subset(digits.labels[train], size)]
    # One image at a time: a 200-image batch makes the interpreter grow its tensor arena by
    # several MB for the life of the process; 200 single calls cost about 2 ms.
    features = np.stack([extractor.extract(image)[1] for image in digits.images[chosen]])
    scaler = StandardScaler.fit(features)
    pca = PCA.fit(scaler.transform(features), n_components=min(n_components, features.shape[1]))
    transform = FeatureTransform([scaler, pca])
    knn = KNN(k=k, max_size=size).fit(transform.transform(features), digits.labels[chosen])
    return transform, knn


def _scores(monitor) -> dict:
    scores = {}
    for name in SCORE_ATTRIBUTES:
        value = getattr(type(monitor), name, None)
        if isinstance(value, property):
            scores[name] = _plain(getattr(monitor, name))
    if hasattr(monitor, "lower_limit"):
        scores["lower_limit"] = float(monitor.lower_limit())
    return scores


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _image_stats_payload(statistics: dict) -> dict:
    """The image statistics as the server's prediction log takes them: flat names → numbers.
    Colour images add their red/green/blue channel means."""
    payload = {name: round(float(statistics[name]), 6) for name in STATISTICS_NAMES if name in statistics}
    means = statistics.get("channel_means") or []
    if len(means) >= 3:
        payload.update(
            {
                f"{colour}_mean": round(float(m), 6)
                for colour, m in zip(("red", "green", "blue"), means[:3], strict=True)
            }
        )
    return payload


def _base64_float32(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
