"""Accuracy per model version, group and device over time from the labels that count, and the
alert kinds labeling adds to drift's rules (accuracy floor, label backlog)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import make_device
from devices.models import DeviceGroup
from drift.alerts import evaluate
from drift.models import Alert, AlertRule
from labeling import performance
from labeling.models import Label, LabelTask, ReviewStatus, TaskStatus
from labeling.tests.factories import tasks

pytestmark = pytest.mark.django_db
NOW = timezone.now()


def labeled(n_right: int, n_wrong: int, *, device=None, version="digits@1", at=NOW, **label_fields) -> None:
    """n_right labels agreeing with the prediction '7', n_wrong saying '1'."""
    for task, value in zip(
        tasks(n_right + n_wrong, model_version=version, device_id=device and device.pk, predicted_label="7"),
        ["7"] * n_right + ["1"] * n_wrong,
        strict=True,
    ):
        Label.objects.create(task=task, value=value, created=at - timedelta(minutes=1), **label_fields)
        LabelTask.objects.filter(pk=task.pk).update(status=TaskStatus.DONE)


@pytest.fixture(autouse=True)
def _no_folding(settings):
    settings.LABELING_FOLD_DISTANCE = 0


def test_accuracy_per_model_version_is_the_share_agreeing_with_the_prediction():
    labeled(9, 1, version="digits@1")
    labeled(3, 3, version="digits@2")
    rows = performance.accuracy(NOW - timedelta(days=1), NOW + timedelta(seconds=1), bucket=None)
    assert [(r["slice"], r["labels"], r["correct"], r["accuracy"]) for r in rows] == [
        ("digits@1", 10, 9, 0.9),
        ("digits@2", 6, 3, 0.5),
    ]


def test_undone_rejected_and_gold_labels_do_not_count():
    labeled(1, 0)
    labeled(0, 1, undone_at=NOW)
    labeled(0, 1, review=ReviewStatus.REJECTED)
    labeled(0, 1)
    LabelTask.objects.filter(labels__value="1", labels__undone_at=None, labels__review="unreviewed").update(
        gold_label="1"
    )
    (row,) = performance.accuracy(NOW - timedelta(days=1), NOW + timedelta(seconds=1), bucket=None)
    assert (row["labels"], row["accuracy"]) == (1, 1.0)


def test_accuracy_per_group_and_device_over_daily_buckets():
    line = DeviceGroup.objects.create(name="line-1")
    cam = make_device("cam-1", line).device
    labeled(4, 0, device=cam, at=NOW - timedelta(days=1))
    labeled(1, 3, device=cam, at=NOW)
    by_day = performance.accuracy(NOW - timedelta(days=3), NOW + timedelta(seconds=1), by="group")
    assert [(r["slice"], r["accuracy"]) for r in by_day] == [("line-1", 1.0), ("line-1", 0.25)]
    assert by_day[0]["bucket"] < by_day[1]["bucket"]
    (device_row,) = performance.accuracy(NOW - timedelta(days=3), NOW + timedelta(seconds=1), by="device", bucket=None)
    assert device_row["slice"] == str(cam.pk) and device_row["labels"] == 8


def test_an_unknown_slice_is_refused_by_name():
    with pytest.raises(ValueError, match="model_version, group, device"):
        performance.accuracy(NOW, NOW, by="site")


def rule(kind: str, **parameters) -> AlertRule:
    return AlertRule.objects.create(name=f"{kind} {sorted(parameters.items())}", kind=kind, parameters=parameters)


def test_a_model_version_under_its_accuracy_floor_is_a_finding():
    labeled(6, 4, version="digits@1")
    labeled(10, 0, version="digits@2")
    found = evaluate.findings(rule("accuracy_floor", min_accuracy=0.8, min_labels=5), NOW)
    assert [f.subject for f in found] == ["model_version:digits@1"]
    assert found[0].details["accuracy"] == 0.6 and "60.0%" in found[0].message


def test_too_few_labels_do_not_breach_the_floor():
    labeled(0, 3)
    assert evaluate.findings(rule("accuracy_floor", min_accuracy=0.8, min_labels=5), NOW) == []


def test_the_floor_rule_raises_a_firing_alert_through_drifts_lifecycle():
    from drift.alerts import services

    labeled(1, 9)
    floor = rule("accuracy_floor", min_accuracy=0.5, min_labels=5)
    services.evaluate_rules(NOW)
    assert Alert.objects.get(rule=floor).subject == "model_version:digits@1"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "min_accuracy"),
        ({"min_accuracy": 1.5}, "between 0 and 1"),
        ({"min_accuracy": 0.5, "by": "site"}, "by must"),
    ],
)
def test_bad_floor_parameters_are_refused_with_a_reason(parameters, message):
    with pytest.raises(ValueError, match=message):
        evaluate.validate("accuracy_floor", parameters)


def test_a_label_backlog_past_its_size_or_age_is_a_finding():
    tasks(5)
    assert [f.subject for f in evaluate.findings(rule("label_backlog", max_pending=4), NOW)] == ["class_set:digits"]
    assert evaluate.findings(rule("label_backlog", max_pending=5), NOW) == []
    later = NOW + timedelta(hours=3)
    assert len(evaluate.findings(rule("label_backlog", max_age_hours=2), later)) == 1


def test_a_backlog_rule_needs_a_limit():
    with pytest.raises(ValueError, match="max_pending, max_age_hours"):
        evaluate.validate("label_backlog", {})
