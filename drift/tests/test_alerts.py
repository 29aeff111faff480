"""Alerts: each rule kind fires on its condition only, the lifecycle firing → acknowledged →
resolved, the action interval and flapping guard under bursts, e-mail and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import uuid
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from conftest import make_device
from devices.models import Device, DeviceGroup, DeviceStatus
from drift.alerts import services
from drift.alerts.transports import webhook
from drift.models import (
    Alert,
    AlertRule,
    AlertStatus,
    Channel,
    DriftEvent,
    DriftReport,
    DriftStatus,
    Incident,
    Notification,
    ReportStatus,
)
from drift.tasks import send_notification

pytestmark = pytest.mark.django_db
SECRET = "whsec-test-123"


@pytest.fixture
def sent(monkeypatch):
    """Webhook requests, captured instead of sent: (url, body, headers); answers ``status[0]``."""

    class Sent(list):
        status = [200]

    calls = Sent()

    def post(url, body, headers):
        calls.append((url, body, headers))
        return calls.status[0]

    monkeypatch.setattr(webhook, "post", post)
    return calls


@pytest.fixture
def hook(db):
    return Channel.objects.create(name="ops hook", kind="webhook", target="https://hooks.example/x", secret=SECRET)


@pytest.fixture
def inbox(db):
    return Channel.objects.create(name="ops mail", kind="email", target="ops@example.com, oncall@example.com")


@pytest.fixture
def evaluate(django_capture_on_commit_callbacks):
    def evaluate(now=None):
        with django_capture_on_commit_callbacks(execute=True):
            return services.evaluate_rules(now or timezone.now())

    return evaluate


def make_rule(kind, channels=(), **fields) -> AlertRule:
    fields.setdefault("name", f"{kind}-{uuid.uuid4().hex[:6]}")
    rule = AlertRule.objects.create(kind=kind, **fields)
    rule.channels.set(channels)
    return rule


def set_status(device, status):
    Device.objects.filter(pk=device.pk).update(status=status)


def set_telemetry(device, **values):
    Device.objects.filter(pk=device.pk).update(last_telemetry=values)


def subjects(rule) -> set[str]:
    return set(rule.alerts.exclude(status=AlertStatus.RESOLVED).values_list("subject", flat=True))


def add_event(device, *, status=DriftStatus.PENDING, received_at=None, detector="adwin") -> DriftEvent:
    return DriftEvent.objects.create(
        device=device.device if hasattr(device, "device") else device,
        client_id=uuid.uuid4(),
        created=timezone.now(),
        received_at=received_at or timezone.now(),
        detector=detector,
        status=status,
    )


def add_report(share, *, scope="fleet", scope_value="", status=ReportStatus.DONE) -> DriftReport:
    now = timezone.now()
    return DriftReport.objects.create(
        scope=scope,
        scope_value=scope_value,
        reference_start=now - timedelta(days=10),
        reference_end=now - timedelta(days=9),
        current_start=now - timedelta(hours=24),
        current_end=now,
        status=status,
        share_of_drifted_features=share,
        dataset_drift=share >= 0.5,
    )


# --- Rule kinds --------------------------------------------------------------------------------


def test_device_offline_fires_for_offline_devices_only(device_a, device_b, evaluate):
    rule = make_rule("device_offline")
    set_status(device_a.device, DeviceStatus.OFFLINE)
    set_status(device_b.device, DeviceStatus.ONLINE)
    evaluate()
    assert subjects(rule) == {f"device:{device_a.device.pk}"}
    assert "offline" in rule.alerts.get().message


def test_telemetry_threshold_fires_when_p95_latency_is_above_500_ms(device_a, device_b, evaluate):
    rule = make_rule("telemetry_threshold", parameters={"metric": "latency_p95_ms", "op": ">", "threshold": 500})
    set_telemetry(device_a.device, latency_p95_ms=612.5)
    set_telemetry(device_b.device, latency_p95_ms=480.0)
    evaluate()
    assert subjects(rule) == {f"device:{device_a.device.pk}"}
    assert rule.alerts.get().details["value"] == 612.5


def test_telemetry_threshold_fires_when_error_rate_is_above_5_percent(device_a, device_b, evaluate):
    rule = make_rule("telemetry_threshold", parameters={"metric": "error_rate", "op": ">=", "threshold": 0.05})
    set_telemetry(device_a.device, error_rate=0.05)
    set_telemetry(device_b.device, cpu_percent=99)
    evaluate()
    assert subjects(rule) == {f"device:{device_a.device.pk}"}


def test_drift_event_rule_fires_on_recent_pending_events_only(device_a, device_b, evaluate):
    rule = make_rule("drift_event", parameters={"window_minutes": 30, "detector": "adwin"})
    add_event(device_a)
    add_event(device_b, status=DriftStatus.REJECTED)
    add_event(device_b, received_at=timezone.now() - timedelta(hours=2))
    add_event(device_b, detector="page_hinkley")
    evaluate()
    assert subjects(rule) == {f"device:{device_a.device.pk}"}


def test_incident_rule_fires_on_the_listed_kinds_only(evaluate):
    rule = make_rule("incident", parameters={"kinds": ["population", "cohort"]})
    now = timezone.now()
    fields = {"started_at": now, "ended_at": now, "device_count": 3, "event_count": 5}
    population = Incident.objects.create(kind="population", **fields)
    Incident.objects.create(kind="device_local", **fields)
    evaluate()
    assert subjects(rule) == {f"incident:{population.pk}"}


def test_report_drift_rule_reads_the_latest_finished_report_of_its_scope(evaluate):
    rule = make_rule("report_drift", parameters={"min_share": 0.5}, scope="group", scope_value="line-1")
    add_report(0.9, scope="group", scope_value="line-2")
    add_report(0.3, scope="group", scope_value="line-1")
    evaluate()
    assert subjects(rule) == set()

    add_report(0.6, scope="group", scope_value="line-1")
    evaluate()
    assert subjects(rule) == {"group:line-1"}


def test_a_group_rule_ignores_devices_of_other_groups(evaluate):
    line_1, line_2 = DeviceGroup.objects.create(name="line-1"), DeviceGroup.objects.create(name="line-2")
    inside, outside = make_device("cam-1", line_1).device, make_device("cam-2", line_2).device
    rule = make_rule("device_offline", scope="group", scope_value="line-1")
    set_status(inside, DeviceStatus.OFFLINE)
    set_status(outside, DeviceStatus.OFFLINE)
    evaluate()
    assert subjects(rule) == {f"device:{inside.pk}"}


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [
        ("telemetry_threshold", {"metric": "latency_p95_ms", "op": "!=", "threshold": 1}),
        ("telemetry_threshold", {"metric": "latency_p95_ms", "op": ">", "threshold": "high"}),
        ("incident", {"kinds": ["everything"]}),
        ("report_drift", {"min_share": 1.5}),
        ("drift_event", {"window_minutes": 0}),
    ],
)
def test_it_rejects_invalid_parameters(kind, parameters):
    with pytest.raises(ValidationError):
        AlertRule(name="bad", kind=kind, parameters=parameters).full_clean()


def test_it_fills_in_default_parameters():
    rule = AlertRule(name="ok", kind="incident", parameters={})
    rule.full_clean()
    assert rule.parameters["window_minutes"] == 60 and "population" in rule.parameters["kinds"]


# --- Lifecycle ----------------------------------------------------------------------------------


def test_lifecycle_firing_acknowledged_resolved_records_who_and_when(device_a, operator, hook, sent, evaluate):
    rule = make_rule("device_offline", channels=[hook], clear_after_minutes=5, action_interval_minutes=10)
    set_status(device_a.device, DeviceStatus.OFFLINE)
    start = timezone.now()
    evaluate(start)
    alert = rule.alerts.get()
    assert alert.status == AlertStatus.FIRING and alert.first_fired_at == start

    assert services.acknowledge(Alert.objects.all(), by=operator) == 1
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED and alert.acknowledged_by == operator
    assert alert.acknowledged_at is not None

    evaluate(start + timedelta(minutes=30))  # still offline, interval passed: acknowledged stays quiet
    assert len(sent) == 1

    set_status(device_a.device, DeviceStatus.ONLINE)
    evaluate(start + timedelta(minutes=32))
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED  # false for 2 minutes only
    evaluate(start + timedelta(minutes=36))
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED and alert.resolved_at == start + timedelta(minutes=36)


def test_a_resolved_alert_fires_again_when_its_condition_returns(device_a, operator, evaluate):
    rule = make_rule("device_offline", clear_after_minutes=0)
    set_status(device_a.device, DeviceStatus.OFFLINE)
    start = timezone.now()
    evaluate(start)
    services.acknowledge(Alert.objects.all(), by=operator)
    set_status(device_a.device, DeviceStatus.ONLINE)
    evaluate(start + timedelta(minutes=1))
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate(start + timedelta(minutes=2))

    alert = rule.alerts.get()
    assert alert.status == AlertStatus.FIRING and alert.acknowledged_by is None
    assert alert.last_fired_at == start + timedelta(minutes=2) and alert.first_fired_at == start
    assert alert.transitions == 2


def test_it_publishes_live_events_for_each_state(
    device_a, operator, evaluate, monkeypatch, django_capture_on_commit_callbacks
):
    events = []
    monkeypatch.setattr("sphere.live._send", lambda topic, event, data: events.append((topic, event, data())))
    make_rule("device_offline", clear_after_minutes=0)
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate()
    with django_capture_on_commit_callbacks(execute=True):
        services.acknowledge(Alert.objects.all(), by=operator)
    set_status(device_a.device, DeviceStatus.ONLINE)
    evaluate()

    assert [(topic, event) for topic, event, _ in events] == [
        ("drift", "alert.firing"),
        ("drift", "alert.acknowledged"),
        ("drift", "alert.resolved"),
    ]
    assert events[0][2]["alert"] == Alert.objects.get().pk


# --- Interval and flapping guard ---------------------------------------------------------------


def test_action_interval_is_honoured_under_a_burst(device_a, hook, inbox, sent, evaluate):
    make_rule("device_offline", channels=[hook, inbox], action_interval_minutes=15)
    set_status(device_a.device, DeviceStatus.OFFLINE)
    start = timezone.now()
    for second in range(0, 60, 3):  # 20 evaluations within a minute
        evaluate(start + timedelta(seconds=second))
    assert Notification.objects.filter(channel=hook, status="sent").count() == 1
    assert Notification.objects.filter(channel=inbox, status="sent").count() == 1
    assert len(sent) == 1 and len(mail.outbox) == 1

    for second in range(0, 60, 3):
        evaluate(start + timedelta(minutes=15, seconds=second))
    assert Notification.objects.filter(channel=hook).count() == 2
    assert Notification.objects.filter(channel=inbox).count() == 2


def test_flapping_guard_holds_resolution_and_silences_the_alert(device_a, hook, sent, evaluate):
    rule = make_rule(
        "device_offline", channels=[hook], action_interval_minutes=0, clear_after_minutes=5, max_transitions_per_hour=4
    )
    alert = None
    start = timezone.now()
    for minute in range(12):  # offline, online, offline ... one evaluation a minute
        set_status(device_a.device, DeviceStatus.OFFLINE if minute % 2 == 0 else DeviceStatus.ONLINE)
        evaluate(start + timedelta(minutes=minute))
        alert = rule.alerts.get()
        assert alert.status == AlertStatus.FIRING  # never false for 5 minutes
        assert alert.flapping == (minute >= 5)  # the fifth change is one too many

    # Notified at minutes 0, 2 and 4; quiet once flapping.
    assert len(sent) == 3
    assert alert.transitions == 11

    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate(start + timedelta(minutes=40))
    evaluate(start + timedelta(minutes=99))
    assert len(sent) == 3  # unchanged for less than an hour: still flapping
    evaluate(start + timedelta(minutes=101))
    alert.refresh_from_db()
    assert not alert.flapping and len(sent) == 4


def toggle_every_5_seconds(device, start, evaluate, minutes=5) -> None:
    """Offline, online, offline ... one evaluation every 5 seconds."""
    for tick in range(minutes * 12):
        set_status(device, DeviceStatus.OFFLINE if tick % 2 == 0 else DeviceStatus.ONLINE)
        evaluate(start + timedelta(seconds=5 * tick))


def test_a_condition_toggling_within_seconds_notifies_at_most_once_per_action_interval(
    device_a, hook, inbox, sent, evaluate
):
    rule = make_rule("device_offline", channels=[hook, inbox], action_interval_minutes=1, max_transitions_per_hour=1000)
    toggle_every_5_seconds(device_a.device, timezone.now(), evaluate)
    # 60 evaluations over 5 minutes, 30 of them true: notified at 0, 1, 2, 3 and 4 minutes only.
    assert len(sent) == len(mail.outbox) == 5
    assert Notification.objects.filter(status="sent").count() == 10
    assert rule.alerts.get().status == AlertStatus.FIRING  # never false for clear_after_minutes


def test_a_condition_toggling_within_seconds_turns_flapping_and_stays_quiet(device_a, hook, inbox, sent, evaluate):
    rule = make_rule("device_offline", channels=[hook, inbox], action_interval_minutes=1, max_transitions_per_hour=4)
    toggle_every_5_seconds(device_a.device, timezone.now(), evaluate)
    alert = rule.alerts.get()
    assert alert.flapping and alert.transitions == 59
    # Only the first firing spoke: flapping from the fifth change (25 s), before the interval passed.
    assert len(sent) == len(mail.outbox) == 1
    assert Notification.objects.count() == 2


# --- Transports ---------------------------------------------------------------------------------


def test_email_goes_through_the_mail_backend_with_the_alert_message(device_a, inbox, evaluate):
    make_rule("device_offline", channels=[inbox], name="cameras offline")
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate()
    [message] = mail.outbox
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert "cameras offline" in message.subject
    assert f"Device {device_a.device.name} is offline." in message.body
    assert Notification.objects.get().status == "sent"


def verify(header: str, body: bytes, secret: str = SECRET) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def test_webhook_body_is_signed_with_the_channel_secret(device_a, hook, sent, evaluate):
    make_rule("device_offline", channels=[hook])
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate()
    [(url, body, headers)] = sent
    assert url == "https://hooks.example/x"
    assert verify(headers["X-Sphere-Signature"], body)
    assert not verify(headers["X-Sphere-Signature"], body, secret="another")
    assert json.loads(body)["subject"] == f"device:{device_a.device.pk}"


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_reaches_a_real_http_server_with_a_verifiable_signature(device_a, evaluate):
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        channel = Channel.objects.create(name="local", kind="webhook", target=url, secret=SECRET)
        make_rule("device_offline", channels=[channel])
        set_status(device_a.device, DeviceStatus.OFFLINE)
        evaluate()
    finally:
        server.shutdown()
        server.server_close()
    [(headers, body)] = Receiver.received
    assert verify(headers["X-Sphere-Signature"], body)
    assert Notification.objects.get().status == "sent"


def test_a_failing_webhook_records_the_error(device_a, hook, sent, evaluate):
    sent.status[0] = 404
    make_rule("device_offline", channels=[hook])
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate()
    notification = Notification.objects.get()
    assert notification.status == "failed" and "HTTP 404" in notification.last_error


def test_a_transient_webhook_failure_is_recorded_and_retried(device_a, hook, sent, evaluate):
    sent.status[0] = 503
    make_rule("device_offline", channels=[hook])
    set_status(device_a.device, DeviceStatus.OFFLINE)
    with pytest.raises(Retry):  # eager tasks raise what a worker would schedule
        evaluate()
    notification = Notification.objects.get()
    assert notification.status == "pending" and notification.last_error == "HTTP 503 from the webhook."
    assert notification.attempts == 1 and notification.next_attempt_at > timezone.now()


def test_a_permanent_webhook_failure_is_not_retried(device_a, hook, sent):
    sent.status[0] = 410
    make_rule("device_offline", channels=[hook])
    set_status(device_a.device, DeviceStatus.OFFLINE)
    services.evaluate_rules(timezone.now())  # the row, without running its task at commit
    result = send_notification.apply(args=(Notification.objects.get().pk,))
    assert result.state == "SUCCESS" and result.result == "failed"
    assert Notification.objects.get().attempts == 1


def test_the_webhook_secret_is_never_shown_back_in_the_admin(client, operator, hook):
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    client.force_login(operator)
    response = client.get(reverse("admin:drift_channel_change", args=[hook.pk]))
    assert response.status_code == 200
    assert SECRET not in response.content.decode()


# --- Admin ----------------------------------------------------------------------------------------


def test_the_operator_acknowledges_alerts_from_the_admin(client, operator, device_a, evaluate):
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    client.force_login(operator)
    make_rule("device_offline")
    set_status(device_a.device, DeviceStatus.OFFLINE)
    evaluate()
    alert = Alert.objects.get()
    url = reverse("admin:drift_alert_changelist")
    response = client.post(url, {"action": "acknowledge", "_selected_action": [alert.pk]})
    assert response.status_code == 302, response.content
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED and alert.acknowledged_by == operator


@pytest.mark.parametrize("model", ["alertrule", "channel", "alert", "notification"])
def test_the_outsider_cannot_see_alert_admin_pages(client, outsider, model):
    client.force_login(outsider)
    response = client.get(reverse(f"admin:drift_{model}_changelist"))
    assert response.status_code in (302, 403)
