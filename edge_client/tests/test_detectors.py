"""Edge drift detectors: detection on seeded streams, quiet on stationary ones, durable state,
bounded memory, a reference that never learns from a drift, and loud argument checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edge_client.detectors import (
    ADWIN,
    DDM,
    DETECTORS,
    EWMAConfidence,
    KNNDistancePageHinkley,
    KSWindow,
    PageHinkley,
    PredictionDistributionJS,
    build_detector,
    detector_from_state,
)
from edge_client.detectors.base import WARNING_LEVEL
from edge_client.detectors.ks_window import ks_pvalue, ks_statistic
from edge_client.detectors.prediction_distribution import default_threshold, js_distance

ONSET = 1000

# --- seeded streams: (values before the onset, values after) -------------------------------


def brightness(seed: int, n: int, mean: float = 0.5) -> list[float]:
    return np.random.default_rng(seed).normal(mean, 0.1, n).tolist()


def distances(seed: int, n: int, mean: float = 1.0) -> list[float]:
    return np.abs(np.random.default_rng(seed).normal(mean, 0.2 * mean, n)).tolist()


def confidences(seed: int, n: int, a: float = 9.0, b: float = 1.0) -> list[float]:
    return np.random.default_rng(seed).beta(a, b, n).tolist()


SHARES = np.array([0.3, 0.25, 0.2, 0.15, 0.1])


def labels(seed: int, n: int, shares=SHARES) -> list[int]:
    return np.random.default_rng(seed).choice(len(shares), n, p=shares).tolist()


def errors(seed: int, n: int, rate: float = 0.25) -> list[int]:
    return (np.random.default_rng(seed).random(n) < rate).astype(int).tolist()


def gaussian(seed: int, n: int, mean: float = 0.0) -> list[float]:
    return np.random.default_rng(seed).normal(mean, 1.0, n).tolist()


# name: (factory, stationary stream, drifted stream, max delay in samples)
CASES = {
    "page_hinkley": (
        lambda: PageHinkley(delta=0.05, threshold=2.0),
        brightness,
        lambda seed, n: brightness(seed, n, mean=0.7),
        25,
    ),
    "knn_distance": (KNNDistancePageHinkley, distances, lambda seed, n: distances(seed, n, mean=1.4), 25),
    "ewma_confidence": (EWMAConfidence, confidences, lambda seed, n: confidences(seed, n, a=5.0), 150),
    "prediction_distribution": (
        lambda: PredictionDistributionJS(n_classes=5),
        labels,
        lambda seed, n: labels(seed, n, shares=np.array([0.1, 0.1, 0.2, 0.2, 0.4])),
        100,
    ),
    "adwin": (ADWIN, gaussian, lambda seed, n: gaussian(seed, n, mean=1.0), 100),
    "ks_window": (KSWindow, gaussian, lambda seed, n: gaussian(seed, n, mean=1.0), 60),
    # DDM compares with the best error rate since its start, so it is slow after a long calm.
    "ddm": (DDM, errors, lambda seed, n: errors(seed, n, rate=0.6), 300),
}


def drifting(name: str, seed: int = 1, after: int = 2000) -> list:
    _, before_stream, after_stream, _ = CASES[name]
    return before_stream(seed, ONSET) + after_stream(seed + 100, after)


def signals(detector, stream) -> list[int]:
    hits = []
    for i, x in enumerate(stream):
        detector.update(x)
        if detector.drift_detected:
            hits.append(i)
    return hits


def first_after_onset(hits: list[int]) -> int | None:
    return next((i - ONSET for i in hits if i >= ONSET), None)


# --- detection and quiet -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_detector_detects_a_real_shift_within_its_bounded_delay(name, seed):
    factory, _, _, max_delay = CASES[name]
    hits = signals(factory(), drifting(name, seed))
    assert [i for i in hits if i < ONSET] == [], "signalled before the shift"
    delay = first_after_onset(hits)
    assert delay is not None and delay <= max_delay, f"{name}: delay {delay} > {max_delay}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_detector_stays_quiet_on_10000_stationary_samples(name):
    # A fixed regression stream; false-alarm *rates* are the next test's and the benchmark's job
    # (benchmarks/edge_detectors.py: 0.2 to 0.8 per 10,000 for the label-free detectors).
    factory, stationary, _, _ = CASES[name]
    assert signals(factory(), stationary(12, 10_000)) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_detector_raises_at_most_one_false_alarm_per_10000_stationary_samples(name):
    factory, stationary, _, _ = CASES[name]
    alarms = sum(len(signals(factory(), stationary(seed, 10_000))) for seed in range(20, 25))
    assert alarms <= 5


def test_page_hinkley_detects_an_abrupt_upward_shift_within_25_samples():
    stream = brightness(1, ONSET) + brightness(2, 500, mean=0.7)
    assert first_after_onset(signals(PageHinkley(delta=0.05, threshold=2.0, mode="up"), stream)) <= 25


def test_page_hinkley_in_down_mode_ignores_a_rise_and_catches_a_fall():
    rise = brightness(1, ONSET) + brightness(2, 1000, mean=0.8)
    fall = brightness(1, ONSET) + brightness(2, 1000, mean=0.2)
    assert signals(PageHinkley(delta=0.05, threshold=2.0, mode="down"), rise) == []
    assert first_after_onset(signals(PageHinkley(delta=0.05, threshold=2.0, mode="down"), fall)) <= 25


def test_knn_distance_accepts_the_array_of_neighbour_distances():
    by_mean, by_array = KNNDistancePageHinkley(), KNNDistancePageHinkley()
    rng = np.random.default_rng(3)
    for row in np.abs(rng.normal(1.0, 0.2, (300, 5))):
        by_mean.update(float(np.mean(row)))
        by_array.update(row)
    assert by_mean.to_state() == by_array.to_state()


def test_knn_distance_needs_several_far_samples_not_one_glitched_frame():
    detector = KNNDistancePageHinkley()
    for x in distances(1, 500):
        detector.update(x)
    detector.update(1e6)  # a black frame
    assert not detector.drift_detected


def test_ewma_confidence_ignores_a_rise_in_confidence():
    stream = confidences(1, ONSET) + confidences(2, 2000, a=30.0)
    assert signals(EWMAConfidence(), stream) == []


def test_prediction_distribution_default_threshold_follows_classes_and_window():
    assert PredictionDistributionJS(n_classes=10).threshold == pytest.approx(0.246, abs=0.001)
    assert default_threshold(4, 100, 500) < default_threshold(10, 100, 500)
    assert default_threshold(10, 400, 500) < default_threshold(10, 100, 500)


def test_ddm_raises_a_warning_before_the_drift():
    detector, warned_at, drift_at = DDM(), None, None
    for i, x in enumerate(drifting("ddm", seed=4)):
        detector.update(x)
        if detector.warning_detected and warned_at is None and i >= ONSET:
            warned_at = i
        if detector.drift_detected:
            drift_at = i
            break
    assert warned_at is not None and drift_at is not None and warned_at < drift_at


def test_after_a_drift_the_next_update_starts_afresh_like_river():
    detector = KSWindow()
    hits = signals(detector, drifting("ks_window"))
    assert hits and all(b - a > detector.reference_size for a, b in zip(hits, hits[1:], strict=False))


# --- agreement with reference implementations ----------------------------------------------


def test_ks_statistic_and_pvalue_agree_with_scipy():
    from scipy import stats  # scipy comes with scikit-learn (requirements/dev.txt)

    rng = np.random.default_rng(0)
    for trial in range(300):
        a = rng.normal(0, 1, 200)
        b = rng.normal(rng.uniform(0, 1.5), rng.uniform(0.5, 2), 30)
        if trial % 3 == 0:  # ties, as with quantised features
            a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
        expected = stats.ks_2samp(a, b, method="asymp")
        statistic = ks_statistic(np.sort(a), np.sort(b))
        p_value = ks_pvalue(statistic, a.size, b.size)
        assert statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert p_value == pytest.approx(expected.pvalue, abs=0.02)
        if 1e-4 < expected.pvalue < 0.05:  # where alpha lives, relative agreement matters
            assert p_value == pytest.approx(expected.pvalue, rel=0.3)


def test_js_distance_agrees_with_scipy_for_few_and_many_classes():
    from scipy.spatial import distance

    rng = np.random.default_rng(1)
    for k in (2, 5, 40):
        p, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
        p[0] = 0.0
        p /= p.sum()
        assert js_distance(p, q) == pytest.approx(distance.jensenshannon(p, q, base=2), abs=1e-12)


def test_adwin_and_ddm_signal_exactly_where_river_does():
    from river import drift as river_drift  # requirements/dev.txt

    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0.8, 1, 3000), rng.exponential(1, 3000)]).tolist()
    for params in ({}, {"clock": 1}, {"delta": 0.1, "max_buckets": 3, "min_window_length": 2}):
        assert signals(ADWIN(**params), values) == signals(river_drift.ADWIN(**params), values)
    bits = errors(3, 4000, 0.1) + errors(4, 4000, 0.35)
    assert signals(DDM(), bits) == signals(river_drift.binary.DDM(), bits)


# --- durability ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cut", [50, ONSET + 3, ONSET + 600])
def test_state_round_trips_through_json_and_continues_identically(name, cut):
    stream = drifting(name, seed=5)
    uninterrupted, first_half = CASES[name][0](), CASES[name][0]()
    signals(first_half, stream[:cut])
    restored = type(first_half).from_state(json.loads(json.dumps(first_half.to_state(), allow_nan=False)))
    tail = stream[cut:]
    expected = signals(uninterrupted, stream)
    assert [i + cut for i in signals(restored, tail)] == [i for i in expected if i >= cut]
    assert restored.to_state() == uninterrupted.to_state()


def test_a_snapshot_taken_at_the_moment_of_drift_restores_that_verdict():
    detector = KSWindow()
    for x in drifting("ks_window"):
        detector.update(x)
        if detector.drift_detected:
            break
    restored = detector_from_state(json.loads(json.dumps(detector.to_state())))
    assert isinstance(restored, KSWindow) and restored.drift_detected


def test_from_state_refuses_a_snapshot_of_another_kind_or_shape():
    state = ADWIN().to_state()
    with pytest.raises(ValueError, match="not a version 1 'ddm' snapshot"):
        DDM.from_state(state)
    state["state"]["_counts"]["data"] = [0, 0]  # written with other sizes
    with pytest.raises(ValueError, match="_counts"):
        ADWIN.from_state(state)
    with pytest.raises(ValueError, match="kind"):
        detector_from_state({"kind": "nope"})


# --- bounded memory ------------------------------------------------------------------------


def array_shapes(detector) -> dict:
    return {k: v.shape for k, v in vars(detector).items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_stays_bounded_over_100000_updates(name):
    factory, stationary, drifted, _ = CASES[name]
    detector = factory()
    stream = stationary(8, 50_000) + drifted(9, 50_000)
    signals(detector, stream[:1000])
    shapes = array_shapes(detector)
    signals(detector, stream[1000:])
    assert array_shapes(detector) == shapes
    assert not any(isinstance(v, list | dict | set) for v in vars(detector).values())
    assert len(json.dumps(detector.to_state())) < 12_000


def test_adwin_forgets_its_oldest_bucket_instead_of_growing_past_max_rows():
    detector = ADWIN(max_buckets=2, max_rows=3)
    for _ in range(1000):
        detector.update(1.0)
    assert detector.width <= 2 * (1 + 2 + 4) + 1
    assert detector.estimation == pytest.approx(1.0)
    assert detector._n_rows <= 3


# --- the reference never learns from a drift -----------------------------------------------


def frozen_while_warning(detector, stream, reference, warning) -> tuple[bool, int]:
    """Feed ``stream``; return whether the reference stayed put on every update that was in the
    warning zone (or signalled), and how many such updates were seen."""
    seen, frozen = 0, True
    for x in stream:
        before = np.copy(reference(detector))
        detector.update(x)
        if detector.drift_detected or warning(detector):
            seen += 1
            frozen &= bool(np.array_equal(before, reference(detector)))
        if detector.drift_detected:
            break
    return frozen, seen


def test_page_hinkley_reference_is_frozen_while_the_test_climbs_towards_a_drift():
    detector = PageHinkley(delta=0.05, threshold=2.0, mode="up")
    signals(detector, brightness(1, ONSET))
    learned = detector.reference_mean
    frozen, seen = frozen_while_warning(
        detector,
        brightness(2, 500, mean=0.6),
        lambda d: d.reference_mean,
        lambda d: d.statistic > d.threshold * WARNING_LEVEL,
    )
    assert frozen and seen > 0
    # Only the first drifted values, before the warning zone, were learned (with weight 1/n).
    assert detector.drift_detected and detector.reference_mean == pytest.approx(learned, abs=5e-3)


def test_knn_distance_reference_is_frozen_while_far_samples_accumulate():
    detector = KNNDistancePageHinkley()
    signals(detector, distances(1, ONSET))
    frozen, seen = frozen_while_warning(
        detector,
        distances(2, 500, mean=1.2),
        lambda d: (d.reference_mean, d.reference_std),
        lambda d: d.statistic > d.threshold * WARNING_LEVEL,
    )
    assert frozen and seen > 0 and detector.drift_detected


def test_ewma_confidence_centre_line_is_frozen_while_the_chart_sinks():
    detector = EWMAConfidence()
    signals(detector, confidences(1, ONSET))
    frozen, seen = frozen_while_warning(
        detector,
        confidences(2, 1000, a=6.0),
        lambda d: d.reference_mean,
        lambda d: d.ewma < d.reference_mean - WARNING_LEVEL * (d.reference_mean - d.lower_limit()),
    )
    assert frozen and seen > 0 and detector.drift_detected


def test_prediction_distribution_reference_is_frozen_while_the_mix_is_off():
    detector = PredictionDistributionJS(n_classes=5)
    signals(detector, labels(1, ONSET))
    frozen, seen = frozen_while_warning(
        detector,
        labels(2, 1000, shares=np.array([0.2, 0.2, 0.2, 0.2, 0.2])),
        lambda d: d.reference,
        lambda d: d.distance > d.threshold * WARNING_LEVEL,
    )
    assert frozen and seen > 0 and detector.drift_detected


def test_ks_window_reference_is_frozen_while_the_test_is_near_significance():
    detector = KSWindow(reference_rate=1.0)  # admit every in-control value: the strictest case
    signals(detector, gaussian(1, ONSET))
    frozen, seen = frozen_while_warning(
        detector,
        gaussian(2, 500, mean=1.0),
        lambda d: d.reference,
        lambda d: d.p_value <= d.alpha**WARNING_LEVEL,
    )
    assert frozen and seen > 0 and detector.drift_detected


def test_ddm_minimum_is_frozen_while_in_the_warning_zone():
    detector = DDM()
    signals(detector, errors(1, ONSET))
    frozen, seen = frozen_while_warning(
        detector, errors(2, 2000, rate=0.5), lambda d: d.reference, lambda d: d.warning_detected
    )
    assert frozen and seen > 0 and detector.drift_detected


def test_references_keep_learning_slowly_while_all_is_well():
    detector = PageHinkley(delta=0.05, threshold=2.0, reference_rate=0.01)
    signals(detector, brightness(1, 200))
    signals(detector, [0.52] * 300)  # a benign change well inside the tolerance
    assert 0.51 < detector.reference_mean < 0.52


# --- argument and input checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (PageHinkley, {"mode": "sideways"}, "mode"),
        (PageHinkley, {"threshold": 0}, "threshold"),
        (PageHinkley, {"alpha": 1.5}, "alpha"),
        (PageHinkley, {"min_samples": 0}, "min_samples"),
        (PageHinkley, {"min_samples": True}, "min_samples"),
        (PageHinkley, {"delta": "0.1"}, "delta"),
        (KNNDistancePageHinkley, {"delta": -1.0}, "delta"),
        (KNNDistancePageHinkley, {"reference_rate": 2.0}, "reference_rate"),
        (EWMAConfidence, {"smoothing": 0.0}, "smoothing"),
        (EWMAConfidence, {"n_sigma": math.nan}, "n_sigma"),
        (PredictionDistributionJS, {"n_classes": 1}, "n_classes"),
        (PredictionDistributionJS, {"n_classes": 3, "window_size": 0}, "window_size"),
        (PredictionDistributionJS, {"n_classes": 3, "threshold": 2.0}, "threshold"),
        (ADWIN, {"delta": 0.0}, "delta"),
        (ADWIN, {"clock": 0}, "clock"),
        (ADWIN, {"max_rows": 1}, "max_rows"),
        (KSWindow, {"alpha": 1.0}, "alpha"),
        (KSWindow, {"stat_size": 1}, "stat_size"),
        (DDM, {"warm_start": -1}, "warm_start"),
        (DDM, {"drift_threshold": 1.0}, "drift_threshold"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("detector", "x"),
    [
        (PageHinkley(), math.nan),
        (KNNDistancePageHinkley(), math.inf),
        (ADWIN(), "1.0x"),
        (PredictionDistributionJS(n_classes=3), 3),
        (PredictionDistributionJS(n_classes=3), 1.0),
        (DDM(), 2),
    ],
)
def test_a_bad_update_value_raises_instead_of_poisoning_the_state(detector, x):
    before = detector.to_state()
    with pytest.raises(ValueError):
        detector.update(x)
    assert detector.to_state() == before


# --- registry and packaging ----------------------------------------------------------------


def test_build_detector_builds_every_kind_by_name_with_its_parameters():
    assert set(DETECTORS) == {
        "knn_distance",
        "page_hinkley",
        "ewma_confidence",
        "prediction_distribution",
        "adwin",
        "ks_window",
        "ddm",
    }
    assert build_detector("page_hinkley", mode="up").mode == "up"
    assert build_detector("prediction_distribution", n_classes=4).n_classes == 4
    for kind, cls in DETECTORS.items():
        params = {"n_classes": 3} if kind == "prediction_distribution" else {}
        detector = build_detector(kind, **params)
        assert type(detector) is cls and detector.kind == kind
        assert detector.update(1) is None


def test_build_detector_rejects_an_unknown_kind_naming_it():
    with pytest.raises(ValueError, match="kind must be one of .*'cusum'"):
        build_detector("cusum")


def test_constructor_arguments_are_kept_under_their_own_names():
    detector = ADWIN(delta=0.01, clock=8, max_buckets=4, min_window_length=3, grace_period=20, max_rows=10)
    assert (detector.delta, detector.clock, detector.max_buckets) == (0.01, 8, 4)
    assert (detector.min_window_length, detector.grace_period, detector.max_rows) == (3, 20, 10)
    assert "ADWIN(delta=0.01" in repr(detector)


def test_detectors_import_only_numpy_and_the_standard_library():
    code = (
        "import sys, edge_client.detectors\n"
        "heavy = {'django', 'scipy', 'sklearn', 'river', 'pandas'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
