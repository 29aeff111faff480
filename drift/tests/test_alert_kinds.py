"""Rule kinds come from a registry other apps add to, and the built-in ``telemetry_anomaly``
kind fires on devices whose telemetry departs from their own learned baseline."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.urls import reverse
from django.utils import timezone

from conftest import make_device
from devices.models import Device, DeviceGroup, DeviceStatus, TelemetryBaseline
from drift.alerts import registry, services
from drift.alerts.evaluate import Finding, positive_int, register_kind
from drift.models import AlertRule, AlertStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh_registry(monkeypatch):
    """Kinds registered in a test are forgotten after it."""
    registry.get_kind("device_offline")  # the built-ins, loaded before the copy
    monkeypatch.setattr(registry, "_kinds", dict(registry._kinds))


# Kinds another app could add, under names no real app registers (labeling has a label_backlog).
def validate_backlog(parameters: dict) -> dict:
    parameters["max_pending"] = positive_int(parameters, "max_pending", 500)
    return parameters


def backlog(rule, parameters, now) -> list[Finding]:
    pending = 800  # what a labeling app would count
    if pending <= parameters["max_pending"]:
        return []
    return [Finding("labeling:backlog", f"{pending} samples wait for a label.", {"pending": pending})]


def make_rule(kind, **fields) -> AlertRule:
    fields.setdefault("name", kind)
    return AlertRule.objects.create(kind=kind, **fields)


def open_subjects(rule) -> set[str]:
    return set(rule.alerts.exclude(status=AlertStatus.RESOLVED).values_list("subject", flat=True))


# --- Registry ------------------------------------------------------------------------------------


def test_another_app_registers_a_kind_and_its_rules_fire(fresh_registry):
    register_kind("example_backlog", "Label backlog", validate_backlog, backlog)
    rule = AlertRule(name="backlog", kind="example_backlog", parameters={})
    rule.full_clean()
    assert rule.parameters == {"max_pending": 500}
    rule.save()
    services.evaluate_rules(timezone.now())
    assert rule.alerts.get().message == "800 samples wait for a label."


def test_the_kind_choices_are_the_registered_kinds(fresh_registry):
    register_kind("example_halted", "Rollout halted", validate_backlog, backlog)
    choices = dict(AlertRule._meta.get_field("kind").choices)
    assert choices["example_halted"] == "Rollout halted"
    assert {"drift_event", "incident", "report_drift", "telemetry_threshold", "telemetry_anomaly"} < set(choices)


def test_an_unknown_kind_is_refused_with_a_clear_message():
    with pytest.raises(ValidationError) as refused:
        AlertRule(name="typo", kind="no_such_kind", parameters={}).full_clean()
    assert refused.value.message_dict == {"kind": ["'no_such_kind' is not a registered alert kind."]}


def test_the_admin_refuses_an_unknown_kind(client, operator):
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    client.force_login(operator)
    form = {
        "name": "typo",
        "kind": "no_such_kind",
        "parameters": "{}",
        "scope": "fleet",
        "action_interval_minutes": 60,
        "clear_after_minutes": 5,
        "max_transitions_per_hour": 6,
    }
    response = client.post(reverse("admin:drift_alertrule_add"), form)
    assert response.status_code == 200, response.content  # the form again, with its error
    assert "no_such_kind is not one of the available choices" in response.content.decode()
    assert not AlertRule.objects.exists()


def test_registering_a_name_another_app_took_is_refused(fresh_registry):
    register_kind("example_floor", "Accuracy below floor", validate_backlog, backlog)
    register_kind("example_floor", "Accuracy below floor", validate_backlog, backlog)  # reloaded: fine
    with pytest.raises(ImproperlyConfigured, match="already registered by"):
        register_kind("example_floor", "Accuracy", validate_backlog, validate_backlog)


def test_a_kind_name_must_fit_the_column(fresh_registry):
    with pytest.raises(ImproperlyConfigured):
        register_kind("x" * (registry.NAME_MAX_LENGTH + 1), "Too long", validate_backlog, backlog)


def test_a_rule_of_a_kind_no_longer_registered_does_not_silence_the_others(device_a):
    AlertRule.objects.bulk_create([AlertRule(name="orphan", kind="no_such_kind")])  # its app was removed
    rule = make_rule("device_offline")
    Device.objects.filter(pk=device_a.device.pk).update(status=DeviceStatus.OFFLINE)
    services.evaluate_rules(timezone.now())
    assert open_subjects(rule) == {f"device:{device_a.device.pk}"}


# --- telemetry_anomaly ---------------------------------------------------------------------------

LATENCY = {"latency_p95_ms": {"median": 15.0, "mad": 1.0}, "cpu_percent": {"median": 30.0, "mad": 5.0}}


def baseline(device, statistics=None, *, status=DeviceStatus.ONLINE, **telemetry) -> Device:
    """A device online with a learned baseline (median, MAD per metric) and its latest telemetry."""
    Device.objects.filter(pk=device.pk).update(status=status, last_telemetry=telemetry)
    TelemetryBaseline.objects.create(
        device=device, fitted_at=timezone.now(), samples=200, statistics=statistics or LATENCY
    )
    return device


def test_a_device_whose_latency_jumps_fires_and_a_normal_one_does_not(device_a, device_b):
    jumped = baseline(device_a.device, latency_p95_ms=80.0, cpu_percent=31.0)
    baseline(device_b.device, latency_p95_ms=16.0, cpu_percent=29.0)
    rule = make_rule("telemetry_anomaly")
    services.evaluate_rules(timezone.now())

    assert open_subjects(rule) == {f"device:{jumped.pk}"}
    alert = rule.alerts.get()
    assert alert.details == {"anomalies": [{"metric": "latency_p95_ms", "value": 80.0, "median": 15.0, "score": 43.84}]}
    assert "latency_p95_ms = 80.0 (median 15.0, z 43.84)" in alert.message


def test_the_default_score_is_the_health_modules_limit(device_a, device_b, settings):
    settings.TELEMETRY_ANOMALY_Z = 3.5
    baseline(device_a.device, latency_p95_ms=21.0)  # z = 0.6745 × 6 = 4.05
    baseline(device_b.device, latency_p95_ms=20.0)  # z = 3.37
    rule = make_rule("telemetry_anomaly")
    services.evaluate_rules(timezone.now())
    assert open_subjects(rule) == {f"device:{device_a.device.pk}"}


def test_only_the_chosen_metrics_and_scores_count(device_a, device_b):
    baseline(device_a.device, latency_p95_ms=80.0, cpu_percent=30.0)
    baseline(device_b.device, latency_p95_ms=15.0, cpu_percent=90.0)  # cpu z = 8.09
    cpu_only = make_rule("telemetry_anomaly", parameters={"metrics": ["cpu_percent"]})
    very_far = make_rule("telemetry_anomaly", name="far", parameters={"min_score": 10})
    services.evaluate_rules(timezone.now())
    assert open_subjects(cpu_only) == {f"device:{device_b.device.pk}"}
    assert open_subjects(very_far) == {f"device:{device_a.device.pk}"}


def test_an_offline_devices_stale_telemetry_does_not_fire(device_a):
    baseline(device_a.device, status=DeviceStatus.OFFLINE, latency_p95_ms=80.0)
    rule = make_rule("telemetry_anomaly")
    services.evaluate_rules(timezone.now())
    assert open_subjects(rule) == set()


def test_the_anomaly_rule_honours_group_and_device_scopes():
    line_1, line_2 = DeviceGroup.objects.create(name="line-1"), DeviceGroup.objects.create(name="line-2")
    inside = baseline(make_device("cam-1", line_1).device, latency_p95_ms=80.0)
    other_in_group = baseline(make_device("cam-2", line_1).device, latency_p95_ms=90.0)
    outside = baseline(make_device("cam-3", line_2).device, latency_p95_ms=80.0)
    group_rule = make_rule("telemetry_anomaly", name="group", scope="group", scope_value="line-1")
    device_rule = make_rule("telemetry_anomaly", name="device", scope="device", scope_value=str(inside.pk))
    services.evaluate_rules(timezone.now())
    assert open_subjects(group_rule) == {f"device:{inside.pk}", f"device:{other_in_group.pk}"}
    assert open_subjects(device_rule) == {f"device:{inside.pk}"}
    assert f"device:{outside.pk}" not in open_subjects(group_rule) | open_subjects(device_rule)


def test_absent_parameters_stay_absent_so_the_rule_follows_the_health_module():
    rule = AlertRule(name="anomaly", kind="telemetry_anomaly", parameters={})
    rule.full_clean()
    assert rule.parameters == {}


@pytest.mark.parametrize(
    "parameters",
    [
        {"metrics": ["disk_percent"]},
        {"metrics": []},
        {"metrics": "latency_p95_ms"},
        {"min_score": 0},
        {"min_score": "x"},
    ],
)
def test_it_rejects_invalid_anomaly_parameters(parameters):
    with pytest.raises(ValidationError) as refused:
        AlertRule(name="bad", kind="telemetry_anomaly", parameters=parameters).full_clean()
    assert "parameters" in refused.value.message_dict
