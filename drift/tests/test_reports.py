"""Statistical drift reports over prediction logs: per-feature tests as drift.stats computes
them (and scipy), scoping, bounded reads, policies that run once when due."""

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy import stats as scipy_stats

from conftest import make_device
from devices.models import DeviceGroup, PredictionLog
from drift import reports
from drift.models import DriftReport, ReportPolicy, ReportStatus

pytestmark = pytest.mark.django_db
NOW = timezone.now()
REFERENCE = (NOW - timedelta(days=10), NOW - timedelta(days=9))
CURRENT = (NOW - timedelta(hours=24), NOW)


def log(device, start, n, *, confidence, labels, seed, shift=0.0, brightness=None):
    rng = np.random.default_rng(seed)
    span = (NOW - start).total_seconds() if start > NOW - timedelta(days=2) else 3600.0
    rows = [
        PredictionLog(
            device=device,
            client_id=uuid.uuid4(),
            created=start + timedelta(seconds=float(rng.uniform(0, min(span, 3600)))),
            model_version="digits@1",
            label=str(rng.choice(labels)),
            confidence=float(np.clip(rng.normal(confidence, 0.05), 0, 1)),
            latency_ms=float(rng.normal(8, 1)),
            features=(rng.normal(shift, 1, 8) + np.arange(8)).astype("<f4").tobytes(),
            image_stats=None
            if brightness is None
            else {"brightness": float(rng.normal(brightness, 0.05)), "contrast": float(rng.normal(0.3, 0.02))},
        )
        for _ in range(n)
    ]
    PredictionLog.objects.bulk_create(rows)
    return rows


def run(**fields) -> DriftReport:
    defaults = {
        "scope": "fleet",
        "reference_start": REFERENCE[0],
        "reference_end": REFERENCE[1],
        "current_start": CURRENT[0],
        "current_end": CURRENT[1],
    }
    report = DriftReport.objects.create(**{**defaults, **fields})
    reports.run_report(report.pk)
    report.refresh_from_db()
    return report


@pytest.fixture
def device(db):
    return make_device("cam-1", DeviceGroup.objects.create(name="line-1")).device


def test_a_shifted_current_window_is_dataset_drift_feature_by_feature(device):
    log(device, REFERENCE[0], 400, confidence=0.9, labels=["1", "2", "3"], seed=1)
    log(device, CURRENT[0], 400, confidence=0.6, labels=["3", "7"], seed=2, shift=1.5)
    report = run()
    assert report.status == ReportStatus.DONE, report.error
    columns = report.results["columns"]
    assert {"confidence", "label", "latency_ms", "pca_1"} <= set(columns)
    assert columns["confidence"]["drift_detected"] and columns["label"]["drift_detected"]
    assert columns["pca_1"]["drift_detected"] and not columns["latency_ms"]["drift_detected"]
    assert report.dataset_drift and (report.reference_rows, report.current_rows) == (400, 400)
    histogram = columns["confidence"]["histogram"]
    assert sum(histogram["reference_counts"]) == sum(histogram["current_counts"]) == 400


def test_the_confidence_test_equals_scipy_on_the_same_rows(device):
    reference = log(device, REFERENCE[0], 300, confidence=0.8, labels=["1"], seed=3)
    current = log(device, CURRENT[0], 300, confidence=0.78, labels=["1"], seed=4)
    column = run().results["columns"]["confidence"]
    expected = scipy_stats.ks_2samp([r.confidence for r in reference], [r.confidence for r in current])
    assert column["test"] == "ks"
    assert column["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert column["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)


def test_a_stable_fleet_shows_no_dataset_drift(device):
    log(device, REFERENCE[0], 500, confidence=0.85, labels=["1", "2"], seed=5)
    log(device, CURRENT[0], 500, confidence=0.85, labels=["1", "2"], seed=6)
    report = run()
    assert report.status == ReportStatus.DONE and report.dataset_drift is False


def test_a_scope_reads_only_its_devices(device):
    other = make_device("cam-2").device
    log(device, REFERENCE[0], 100, confidence=0.9, labels=["1"], seed=7)
    log(device, CURRENT[0], 100, confidence=0.9, labels=["1"], seed=8)
    log(other, CURRENT[0], 300, confidence=0.2, labels=["9"], seed=9)
    report = run(scope="group", scope_value="line-1")
    assert (report.reference_rows, report.current_rows) == (100, 100)
    assert run(scope="device", scope_value=str(other.pk)).status == ReportStatus.FAILED


def test_without_data_the_report_fails_saying_so(db):
    report = run()
    assert report.status == ReportStatus.FAILED and "Not enough data" in report.error


def test_each_window_reads_at_most_the_configured_rows(device, settings):
    settings.DRIFT_REPORT_MAX_ROWS = 150
    log(device, REFERENCE[0], 300, confidence=0.9, labels=["1"], seed=10)
    log(device, CURRENT[0], 300, confidence=0.9, labels=["1"], seed=11)
    report = run()
    assert (report.reference_rows, report.current_rows) == (150, 150)


def test_a_policy_creates_one_report_when_due_and_none_before(device, django_capture_on_commit_callbacks):
    log(device, REFERENCE[0], 50, confidence=0.9, labels=["1"], seed=12)
    log(device, CURRENT[0], 50, confidence=0.9, labels=["1"], seed=13)
    ReportPolicy.objects.create(
        name="fleet daily", reference_start=REFERENCE[0], reference_end=REFERENCE[1], interval_minutes=60
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert reports.run_due_policies(now=NOW) == 1
        assert reports.run_due_policies(now=NOW + timedelta(minutes=30)) == 0
    report = DriftReport.objects.get()
    assert report.status == ReportStatus.DONE, report.error
    assert report.current_end == NOW and report.current_start == NOW - timedelta(hours=24)


def test_per_feature_overrides_choose_the_test(device):
    log(device, REFERENCE[0], 200, confidence=0.9, labels=["1"], seed=14)
    log(device, CURRENT[0], 200, confidence=0.9, labels=["1"], seed=15)
    report = run(overrides={"confidence": {"test": "psi", "threshold": 0.2}})
    assert report.results["columns"]["confidence"]["test"] == "psi"


def test_the_report_page_draws_each_features_histograms(device, client, operator):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    client.force_login(operator)
    log(device, REFERENCE[0], 100, confidence=0.9, labels=["1", "<b>x</b>"], seed=16)
    log(device, CURRENT[0], 100, confidence=0.5, labels=["1"], seed=17)
    report = run()
    page = client.get(reverse("admin:drift_driftreport_change", args=[report.pk])).content.decode()
    assert page.count('<svg class="drift-histogram"') == len(report.results["columns"])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # labels come from devices: escaped


def test_the_run_now_action_queues_a_report(device, client, operator, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    client.force_login(operator)
    policy = ReportPolicy.objects.create(name="p", reference_start=REFERENCE[0], reference_end=REFERENCE[1])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("admin:drift_reportpolicy_changelist"), {"action": "run_now", "_selected_action": [policy.pk]}
        )
    report = DriftReport.objects.get()
    assert report.policy == policy and report.created_by == operator


def test_the_image_statistics_devices_log_are_features_of_their_own(device):
    log(device, REFERENCE[0], 300, confidence=0.9, labels=["1"], seed=11, brightness=0.5)
    # A darker scene: brightness moves, contrast does not; one current log has no statistics.
    log(device, CURRENT[0], 299, confidence=0.9, labels=["1"], seed=12, brightness=0.3)
    log(device, CURRENT[0], 1, confidence=0.9, labels=["1"], seed=13)
    columns = run().results["columns"]
    assert columns["image.brightness"]["drift_detected"]
    assert not columns["image.contrast"]["drift_detected"]
    reference = [r.image_stats["brightness"] for r in PredictionLog.objects.filter(created__lt=REFERENCE[1])]
    current = [
        r.image_stats["brightness"] for r in PredictionLog.objects.filter(created__gte=CURRENT[0]) if r.image_stats
    ]
    expected = scipy_stats.ks_2samp(reference, current)
    assert columns["image.brightness"]["test"] == "ks"
    assert columns["image.brightness"]["statistic"] == pytest.approx(expected.statistic, abs=1e-12)


def test_a_statistic_only_one_window_reports_is_not_compared(device):
    log(device, REFERENCE[0], 100, confidence=0.9, labels=["1"], seed=14)
    log(device, CURRENT[0], 100, confidence=0.9, labels=["1"], seed=15, brightness=0.4)
    assert not any(name.startswith("image.") for name in run().results["columns"])
