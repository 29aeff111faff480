"""The pipelines on the shipped model and datagen streams: quiet when nothing changes, loud when it does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_client import config as config_module
from edge_client.adaptation import reference_distance_threshold
from edge_client.datagen import DriftSchedule, image_stream, novel_class_stream
from edge_client.detectors import build_detector
from edge_client.extractors import TFLiteExtractor, image_statistics
from edge_client.knn import KNN
from edge_client.pipeline import (
    AdaptivePipeline,
    InferencePipeline,
    PredictionResult,
    bootstrap,
    monitors_from_config,
)
from edge_client.quarantine import Quarantine
from edge_client.state import StateManager
from edge_client.store import DRIFT_EVENT, PREDICTION, QUARANTINE_SAMPLE, Store
from edge_client.telemetry import Telemetry
from edge_client.transforms import FeatureTransform, StandardScaler

ONSET = 600


@pytest.fixture(scope="module")
def extractor():
    return TFLiteExtractor.shipped()


@pytest.fixture(scope="module")
def fitted(extractor):
    return bootstrap(extractor)


def make_pipeline(extractor, fitted, store=None, telemetry=None, cls=InferencePipeline, **kwargs):
    transform, knn = fitted
    monitors, statistics = monitors_from_config({}, n_classes=10)
    return cls(
        extractor,
        transform,
        KNN.from_state(knn.to_state()),  # a copy: tests must not share a reference set
        monitors,
        store=store,
        telemetry=telemetry,
        image_statistic=statistics,
        **kwargs,
    )


def device_pipeline(extractor, fitted, tmp_path, adapt_every: int):
    """The adaptive pipeline as a device runs it: an outbox, a quarantine linked to it, saved state."""
    store = Store(tmp_path / "outbox.sqlite3")
    pipeline = make_pipeline(
        extractor,
        fitted,
        store,
        cls=AdaptivePipeline,
        quarantine=Quarantine(tmp_path / "quarantine", max_samples=100, store=store),
        state=StateManager(tmp_path / "state"),
        adapt_every=adapt_every,
    )
    return pipeline, store


def run(pipeline, stream) -> list[tuple[int, PredictionResult, int]]:
    return [(t, pipeline.process(image), label) for t, (image, label, _) in enumerate(stream)]


def fired_names(events):
    return {item.payload["detector"] for item in events}


def pending(store, kind):
    return [item for batch in store.iter_pending(kind, 500) for item in batch]


def test_a_stationary_stream_raises_no_drift_and_is_at_least_90_percent_accurate(extractor, fitted, tmp_path):
    store = Store(tmp_path / "outbox.sqlite3")
    results = run(make_pipeline(extractor, fitted, store), image_stream(1000, seed=1))
    assert np.mean([result.label == label for _, result, label in results]) >= 0.9
    assert [t for t, result, _ in results if result.drift] == []
    assert pending(store, DRIFT_EVENT) == []
    assert len(pending(store, PREDICTION)) == 1000


@pytest.mark.parametrize(("shift", "amount"), [("brightness", 4.0), ("contrast", 0.4)])
def test_an_image_shift_raises_a_drift_event_soon_after_its_onset(extractor, fitted, tmp_path, shift, amount):
    store = Store(tmp_path / "outbox.sqlite3")
    stream = image_stream(ONSET + 300, shift, amount, DriftSchedule("abrupt", onset=ONSET), seed=2)
    fired = [
        t
        for t, result, _ in run(make_pipeline(extractor, fitted, store, model_version="digits@1"), stream)
        if result.drift
    ]
    assert fired and ONSET <= fired[0] < ONSET + 50
    events = pending(store, DRIFT_EVENT)
    assert len(events) == len(fired)
    event = events[0].payload
    assert event["model_version"] == "digits@1"
    assert event["window"]["end_sample"] == fired[0]
    assert event["detector"] in fired_names(events) and event["scores"] and event["params"]


def test_novel_classes_raise_a_knn_distance_drift_soon_after_they_appear(extractor, fitted, tmp_path):
    store = Store(tmp_path / "outbox.sqlite3")
    stream = novel_class_stream(
        ONSET + 300, DriftSchedule("abrupt", onset=ONSET), known=range(10), source="synthetic", seed=3
    )
    fired = [
        t for t, result, _ in run(make_pipeline(extractor, fitted, store), stream) if "knn_distance" in result.drift
    ]
    assert fired and ONSET <= fired[0] < ONSET + 50
    detectors = [item.payload["detector"] for item in pending(store, DRIFT_EVENT)]
    assert "knn_distance" in detectors


def test_uncertain_predictions_are_logged_with_the_flag_and_their_features(extractor, fitted, tmp_path):
    store = Store(tmp_path / "outbox.sqlite3")
    pipeline = make_pipeline(extractor, fitted, store, confidence_band=(0.4, 0.7))
    stream = image_stream(300, "noise", 5.0, DriftSchedule("abrupt", onset=0), seed=4)
    results = [result for _, result, _ in run(pipeline, stream)]
    records = pending(store, PREDICTION)
    assert any(result.uncertain for result in results)
    for result, record in zip(results, records, strict=True):
        assert record.payload["uncertain"] is result.uncertain is (0.4 <= result.confidence < 0.7)
        assert ("features" in record.payload) is result.uncertain
        assert record.payload["label"] == str(result.label)


def test_every_logged_prediction_carries_its_image_statistics_for_server_side_drift(extractor, fitted, tmp_path):
    store = Store(tmp_path / "outbox.sqlite3")
    image = next(image_stream(1, seed=6))[0]
    make_pipeline(extractor, fitted, store).process(image)
    (record,) = pending(store, PREDICTION)
    expected = image_statistics(image)
    assert set(record.payload["image_stats"]) == {"brightness", "contrast", "laplacian_variance"}  # grayscale
    assert record.payload["image_stats"]["brightness"] == round(expected["brightness"], 6)


def test_a_failed_inference_counts_in_the_error_rate_and_still_raises(extractor, fitted):
    telemetry = Telemetry(clock=iter([0.0, 10.0]).__next__)
    pipeline = make_pipeline(extractor, fitted, telemetry=telemetry)
    pipeline.process(next(image_stream(1, seed=7))[0])
    with pytest.raises(ValueError):
        pipeline.process(np.zeros((2, 2, 2, 2)))  # not an image the model takes
    assert telemetry.sample()["error_rate"] == 0.5


def test_process_features_skips_the_extractor_and_records_telemetry(extractor, fitted):
    telemetry = Telemetry(clock=iter([0.0, 10.0]).__next__)
    pipeline = make_pipeline(extractor, fitted, telemetry=telemetry)
    image = next(image_stream(1, seed=5))[0]
    probabilities, features = extractor.extract(image)
    from_image, from_features = pipeline.process(image), pipeline.process_features(features, probabilities)
    assert from_features.label == from_image.label
    np.testing.assert_allclose(from_features.features, from_image.features)
    assert telemetry.sample()["throughput_ips"] == 0.2


def test_an_unknown_or_label_needing_monitor_name_is_refused(extractor, fitted):
    transform, knn = fitted
    for name in ("brightness_watch", "ddm"):
        with pytest.raises(ValueError, match="monitor"):
            InferencePipeline(extractor, transform, knn, {name: build_detector("page_hinkley")})


def test_from_config_builds_the_shipped_model_a_bootstrap_reference_and_the_configured_monitors(tmp_path):
    config = config_module.from_dict(
        {
            "data_dir": str(tmp_path),
            "detectors": {
                "knn_distance": {"threshold": 12.0},
                "page_hinkley": {"statistic": "contrast"},
                "adwin": {"enabled": False},
            },
        }
    )
    pipeline = InferencePipeline.from_config(config)
    assert sorted(pipeline.monitors) == ["knn_distance", "page_hinkley"]
    assert pipeline.monitors["knn_distance"].threshold == 12.0
    assert pipeline.statistics == {"page_hinkley": "contrast"}
    assert pipeline.knn.size == 200
    assert pipeline.process(next(image_stream(1, seed=6))[0]).label in range(10)


def test_the_adaptive_pipeline_quarantines_flagged_samples_and_links_them_to_the_drift_event(
    extractor, fitted, tmp_path
):
    pipeline, store = device_pipeline(extractor, fitted, tmp_path, adapt_every=0)
    stream = novel_class_stream(
        ONSET + 200, DriftSchedule("abrupt", onset=ONSET), known=range(10), source="synthetic", seed=3
    )
    run(pipeline, stream)
    samples = pipeline.quarantine.samples()
    assert 0 < len(samples) <= 100
    assert all("far" in s.reasons or s.event_id for s in samples)
    event_ids = {item.id for item in pending(store, DRIFT_EVENT)}
    linked = [s for s in samples if s.event_id]
    assert linked and all(s.event_id in event_ids for s in linked)
    assert len(pending(store, QUARANTINE_SAMPLE)) >= len(samples)
    assert all(sample.image is not None and sample.image.shape == (8, 8) for sample in samples)


def test_the_adaptive_pipeline_adapts_to_a_compact_cluster_and_rolls_the_adaptation_back(extractor, fitted, tmp_path):
    pipeline = make_pipeline(
        extractor,
        fitted,
        cls=AdaptivePipeline,
        quarantine=Quarantine(tmp_path / "quarantine"),
        state=StateManager(tmp_path / "state"),
        adapt_every=0,
    )
    reference, labels = pipeline.knn.reference
    centre = reference[labels == 3].mean(axis=0)
    rng = np.random.default_rng(0)
    for row in centre + rng.normal(scale=0.05, size=(20, len(centre))):
        pipeline.quarantine.add(row, label=3, confidence=1.0, distance=9.0, reasons=["far"])
    probe = centre + 0.01
    before = pipeline.knn.predict(probe)
    size_before = pipeline.knn.size

    entries = pipeline.adapt()

    assert [(entry.label, entry.count) for entry in entries] == [(3, 20)]
    assert len(pipeline.quarantine) == 0
    assert pipeline.knn.predict(probe).distances.mean() < before.distances.mean()
    pipeline.rollback_adaptation()
    assert pipeline.knn.size == size_before
    np.testing.assert_array_equal(pipeline.knn.predict(probe).distances, before.distances)
    assert pipeline.tracker.last() is None
    assert pipeline.tracker.last(include_rolled_back=True).rolled_back


def test_the_adaptive_pipeline_resumes_from_its_latest_saved_state_after_a_restart(tmp_path):
    config = config_module.from_dict({"data_dir": str(tmp_path)})
    first = AdaptivePipeline.from_config(config)
    probe = first.knn.reference[0][0] + 0.5
    first.knn.add(probe, 9)
    first.snapshot({"reason": "test"})

    second = AdaptivePipeline.from_config(config)

    assert second.knn.size == first.knn.size
    np.testing.assert_array_equal(second.knn.predict(probe).distances, first.knn.predict(probe).distances)
    assert second.knn.predict(probe).distances[0] == 0.0


def test_a_pipeline_loaded_from_a_saved_bundle_behaves_like_the_one_it_was_saved_from(extractor, fitted, tmp_path):
    import json

    from edge_client.pipeline import BUNDLE_KNN, BUNDLE_TRANSFORM, load_bundle

    transform, knn = fitted
    (tmp_path / BUNDLE_TRANSFORM).write_text(json.dumps(transform.to_params()))
    np.savez(tmp_path / BUNDLE_KNN, **knn.to_state())
    schedule = DriftSchedule(drift="abrupt", onset=ONSET)
    original = run(make_pipeline(extractor, fitted), image_stream(800, "brightness", 4.0, schedule, seed=3))
    reloaded = run(
        make_pipeline(extractor, load_bundle(tmp_path)), image_stream(800, "brightness", 4.0, schedule, seed=3)
    )
    assert [(t, r.label, r.drift) for t, r, _ in original] == [(t, r.label, r.drift) for t, r, _ in reloaded]
    assert any(r.drift for t, r, _ in reloaded if t >= ONSET)


def test_the_shipped_reference_is_the_bootstrap_of_the_shipped_model(extractor, fitted):
    """tools/build_reference.py must be rerun whenever the model or bootstrap() changes."""
    from edge_client.pipeline import SHIPPED_REFERENCE, load_bundle

    transform, knn = fitted
    shipped_transform, shipped_knn = load_bundle(SHIPPED_REFERENCE)
    np.testing.assert_allclose(shipped_transform.weight, transform.weight, rtol=1e-6, atol=1e-9)
    shipped, fresh = shipped_knn.to_state(), knn.to_state()
    assert shipped.keys() == fresh.keys()
    for key in fresh:
        if np.asarray(fresh[key]).dtype.kind in "fiub":
            np.testing.assert_allclose(shipped[key], fresh[key], rtol=1e-6, atol=1e-9, err_msg=key)
        else:
            assert np.array_equal(shipped[key], fresh[key]), key


def test_a_device_without_a_bundle_starts_from_the_shipped_reference(tmp_path, monkeypatch):
    import edge_client.pipeline as pipeline_module

    def no_fitting(extractor):
        raise AssertionError("bootstrap() ran although the shipped reference exists")

    monkeypatch.setattr(pipeline_module, "bootstrap", no_fitting)
    config = config_module.from_dict({"data_dir": str(tmp_path)})
    pipeline = InferencePipeline.from_config(config)
    image, label, _ = next(iter(image_stream(1, seed=5)))
    assert pipeline.process(image).label == label


def test_a_rejected_drift_event_releases_its_quarantined_samples_and_a_confirmed_one_keeps_them(
    extractor, fitted, tmp_path
):
    pipeline = make_pipeline(
        extractor,
        fitted,
        Store(tmp_path / "outbox.sqlite3"),
        cls=AdaptivePipeline,
        quarantine=Quarantine(tmp_path / "quarantine", max_samples=100),
        state=StateManager(tmp_path / "state"),
        adapt_every=0,
    )
    stream = novel_class_stream(
        ONSET + 200, DriftSchedule("abrupt", onset=ONSET), known=range(10), source="synthetic", seed=3
    )
    run(pipeline, stream)
    by_event = {}
    for sample in pipeline.quarantine.samples():
        if sample.event_id:
            by_event.setdefault(sample.event_id, []).append(sample.id)
    assert by_event, "the shift must have quarantined samples linked to a drift event"
    event_id, linked = next(iter(by_event.items()))
    before = len(pipeline.quarantine)
    assert pipeline.apply_verdict(event_id, "confirmed") == 0
    assert len(pipeline.quarantine) == before
    assert pipeline.apply_verdict(event_id, "rejected") == len(linked)
    assert len(pipeline.quarantine) == before - len(linked)
    assert not any(s.event_id == event_id for s in pipeline.quarantine.samples())


def another_model(extractor, n_components: int):
    """A reference fitted like bootstrap()'s, in a space of another dimension: a server bundle."""
    return bootstrap(extractor, size=150, n_components=n_components, k=3)


def test_a_new_bundle_of_another_dimension_serves_at_once_with_an_empty_quarantine_and_fresh_monitors(
    extractor, fitted, tmp_path
):
    pipeline, store = device_pipeline(extractor, fitted, tmp_path, adapt_every=20)
    novel = novel_class_stream(400, DriftSchedule("abrupt", onset=100), known=range(10), source="synthetic", seed=4)
    run(pipeline, itertools.islice(novel, 150))
    assert len(pipeline.quarantine) > 0
    shipped_before = len(pending(store, QUARANTINE_SAMPLE))
    transform, knn = another_model(extractor, n_components=16)

    pipeline.use_bundle(transform, knn, "digits@7")

    assert len(pipeline.quarantine) == 0  # old-space features never meet the new reference
    assert len(pending(store, QUARANTINE_SAMPLE)) == shipped_before  # the outbox still ships them
    assert pipeline.far_distance == pytest.approx(reference_distance_threshold(knn, factor=1.5))
    assert all(getattr(monitor, "_n", 0) == 0 for monitor in pipeline.monitors.values())
    results = run(pipeline, novel)  # the quarantine refills and the adapter runs in the new space
    assert len(results) == 250 and results[-1][1].features.shape == (16,)
    assert pending(store, PREDICTION)[-1].payload["model_version"] == "digits@7"


def scaled(fitted, factor: float):
    """The same model in a space stretched ``factor`` times: every neighbour distance scales by it."""
    transform, knn = fitted
    dim = transform.output_dim
    stretch = StandardScaler(np.zeros(dim), np.full(dim, 1.0 / factor))
    reference, labels = knn.reference
    return FeatureTransform([*transform.steps, stretch]), KNN(k=knn.k, max_size=knn.max_size).fit(
        reference * factor, labels
    )


def test_a_new_bundle_is_no_drift_its_monitors_learn_the_new_models_signals_afresh(extractor, fitted, tmp_path):
    stream = image_stream(1100, seed=8)
    switched, poked = (make_pipeline(extractor, fitted) for _ in range(2))
    for image, _, _ in itertools.islice(stream, 700):
        switched.process(image)
        poked.process(image)
    assert not switched.monitors["knn_distance"].drift_detected

    switched.use_bundle(*scaled(fitted, 3.0), "digits@2")
    poked.transform, poked.knn = scaled(fitted, 3.0)  # swapped under monitors that knew the old one

    after = [(switched.process(image).drift, poked.process(image).drift) for image, _, _ in stream]
    assert not any(fired for fired, _ in after)
    assert any("knn_distance" in fired for _, fired in after[:50])


def test_the_far_factor_of_the_config_sets_how_far_a_sample_must_be_to_be_quarantined(tmp_path):
    config = config_module.from_dict({"data_dir": str(tmp_path), "quarantine": {"far_factor": 1.0}})
    pipeline = AdaptivePipeline.from_config(config)

    assert pipeline.far_distance == pytest.approx(reference_distance_threshold(pipeline.knn, factor=1.0))
    assert pipeline.far_distance < reference_distance_threshold(pipeline.knn)  # the default factor, 1.5
