"""Alert notifications are claimed rows: sent once per due notification however often its task
runs, retried with the same delivery id, and migrated from the old one-row-per-attempt table."""

from __future__ import annotations

import http.server
import smtplib
import threading
import time
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.core import mail
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from drift.alerts import delivery
from drift.alerts.transports import email, webhook
from drift.models import Alert, AlertRule, Channel, Notification
from drift.tasks import evaluate_alerts, send_notification

pytestmark = pytest.mark.django_db
SECRET = "whsec-test-123"


@pytest.fixture
def sent(monkeypatch):
    """Webhook requests, captured instead of sent: (url, body, headers); answers ``status``
    in turn (the last one from then on)."""

    class Sent(list):
        status = [200]

    calls = Sent()

    def post(url, body, headers):
        calls.append((url, body, headers))
        return calls.status.pop(0) if len(calls.status) > 1 else calls.status[0]

    monkeypatch.setattr(webhook, "post", post)
    return calls


@pytest.fixture
def hook(db):
    return Channel.objects.create(name="ops hook", kind="webhook", target="https://hooks.example/x", secret=SECRET)


@pytest.fixture
def inbox(db):
    return Channel.objects.create(name="ops mail", kind="email", target="ops@example.com")


def make_alert(name="cameras offline") -> Alert:
    now = timezone.now()
    rule = AlertRule.objects.create(name=name, kind="device_offline")
    moments = {"first_fired_at": now, "last_fired_at": now, "last_true_at": now, "last_notified_at": now}
    return Alert.objects.create(rule=rule, subject="device:x", changed_at=now, window_started_at=now, **moments)


def make_notification(channel, alert=None, **fields) -> Notification:
    alert = alert or make_alert()
    return Notification.objects.create(
        alert=alert, channel=channel, due_at=alert.last_notified_at, next_attempt_at=alert.last_notified_at, **fields
    )


# --- Once per notification -----------------------------------------------------------------------


def test_the_same_task_run_twice_sends_once_and_keeps_one_sent_row(hook, sent):
    notification = make_notification(hook)
    assert send_notification.apply(args=(notification.pk,)).result == "sent"
    assert send_notification.apply(args=(notification.pk,)).result == "skipped"
    assert len(sent) == 1
    notification.refresh_from_db()
    assert Notification.objects.count() == 1
    assert notification.status == "sent" and notification.attempts == 1 and notification.sent_at is not None


def test_the_lifecycle_creates_one_row_per_channel_and_due_moment(hook, inbox, sent):
    alert, now = make_alert(), timezone.now()
    assert delivery.schedule(alert, [hook, inbox], due_at=now) == 2
    assert delivery.schedule(alert, [hook, inbox], due_at=now) == 0  # the same decision again
    assert delivery.schedule(alert, [hook], due_at=now + timedelta(hours=1)) == 1
    assert Notification.objects.count() == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_one_notification_send_once(hook, monkeypatch):
    requests, start = [], threading.Barrier(2)

    def slow_post(url, body, headers):
        requests.append(headers)
        time.sleep(0.3)  # the other run tries to claim while this one is sending
        return 200

    monkeypatch.setattr(webhook, "post", slow_post)
    notification = make_notification(hook)
    results = []

    def run():
        try:
            start.wait()
            results.append(delivery.deliver(notification.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["sent", "skipped"] and len(requests) == 1
    notification.refresh_from_db()
    assert notification.status == "sent" and notification.attempts == 1


# --- Retries -------------------------------------------------------------------------------------


def test_a_transient_failure_then_success_leaves_one_sent_row_with_two_attempts(hook, sent):
    sent.status[:] = [503, 200]
    notification = make_notification(hook)
    with pytest.raises(Retry):  # eager tasks raise what a worker would schedule
        send_notification.delay(notification.pk)
    notification.refresh_from_db()
    assert notification.status == "pending" and notification.last_error == "HTTP 503 from the webhook."

    assert send_notification.apply(args=(notification.pk,)).result == "sent"
    notification.refresh_from_db()
    assert Notification.objects.count() == 1
    assert notification.status == "sent" and notification.attempts == 2
    assert [entry["outcome"] for entry in notification.attempt_log] == ["retry", "sent"]
    assert notification.attempt_log[0]["error"] == "HTTP 503 from the webhook."


def test_retries_back_off_and_stop_after_the_last_attempt(hook, sent):
    sent.status[:] = [503]
    notification = make_notification(hook)
    countdowns = []
    for _ in range(delivery.MAX_ATTEMPTS - 1):
        with pytest.raises(delivery.RetryLater) as retry:
            delivery.deliver(notification.pk)
        countdowns.append(retry.value.countdown)
    assert countdowns == [30, 60, 120]
    assert delivery.deliver(notification.pk) == "failed"
    assert delivery.deliver(notification.pk) == "skipped"
    notification.refresh_from_db()
    assert notification.status == "failed" and notification.attempts == delivery.MAX_ATTEMPTS == len(sent)


class FlakyReceiver(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first request, 204 to the next ones."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(503 if len(self.received) == 1 else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_receiver_sees_the_same_delivery_id_on_a_retry():
    server = http.server.HTTPServer(("127.0.0.1", 0), FlakyReceiver)
    FlakyReceiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        notification = make_notification(Channel.objects.create(name="local", kind="webhook", target=url, secret="s"))
        with pytest.raises(delivery.RetryLater):
            delivery.deliver(notification.pk)
        assert delivery.deliver(notification.pk) == "sent"
    finally:
        server.shutdown()
        server.server_close()
    first, second = (headers["X-Sphere-Delivery"] for headers, _ in FlakyReceiver.received)
    assert first == second == str(notification.delivery_id)
    assert b'"delivery": "' + first.encode() in FlakyReceiver.received[1][1]  # signed along with the body


def test_an_email_retry_carries_the_same_message_id(inbox, monkeypatch, settings):
    settings.DEFAULT_FROM_EMAIL = "Sphere <alerts@sphere.example>"
    failures, refused = [smtplib.SMTPServerDisconnected("gone")], []
    real_send = email.EmailMessage.send

    def flaky_send(message, fail_silently=False):
        if failures:
            refused.append(message.message()["Message-ID"])
            raise failures.pop()
        return real_send(message, fail_silently)

    monkeypatch.setattr(email.EmailMessage, "send", flaky_send)
    notification = make_notification(inbox)
    with pytest.raises(delivery.RetryLater):
        delivery.deliver(notification.pk)
    assert delivery.deliver(notification.pk) == "sent"
    [accepted] = mail.outbox
    assert refused == [accepted.message()["Message-ID"]] == [f"<{notification.delivery_id}@sphere.example>"]


# --- Lost tasks ----------------------------------------------------------------------------------


def test_a_claim_stuck_in_sending_past_the_timeout_is_tried_again_with_the_same_delivery_id(hook, sent):
    claimed_at = timezone.now() - delivery.SENDING_TIMEOUT - timedelta(seconds=1)
    notification = make_notification(hook, status="sending", attempts=1, claimed_at=claimed_at)
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=claimed_at + delivery.SENDING_TIMEOUT)
    assert delivery.deliver(notification.pk) == "sent"
    [(_, _, headers)] = sent
    assert headers["X-Sphere-Delivery"] == str(notification.delivery_id)
    notification.refresh_from_db()
    assert notification.status == "sent" and notification.attempts == 2


def test_a_recent_claim_in_sending_is_left_to_its_worker(hook, sent):
    notification = make_notification(hook)
    Notification.objects.filter(pk=notification.pk).update(
        status="sending", attempts=1, next_attempt_at=timezone.now() + delivery.SENDING_TIMEOUT
    )
    assert delivery.deliver(notification.pk) == "skipped" and sent == []


def test_the_beat_requeues_notifications_whose_task_was_lost(hook, sent, django_capture_on_commit_callbacks):
    long_ago = timezone.now() - delivery.STALL_GRACE - timedelta(minutes=1)
    never_ran = make_notification(hook, alert=make_alert("a"))
    worker_died = make_notification(hook, alert=make_alert("b"), status="sending", attempts=1)
    just_queued = make_notification(hook, alert=make_alert("c"))
    Notification.objects.exclude(pk=just_queued.pk).update(next_attempt_at=long_ago)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate_alerts.apply()
    statuses = [Notification.objects.get(pk=row.pk).status for row in (never_ran, worker_died, just_queued)]
    assert statuses == ["sent", "sent", "pending"]
    assert len(sent) == 2


def test_the_beat_gives_up_on_a_lost_claim_out_of_attempts(hook, sent):
    lost = make_notification(hook, status="sending", attempts=delivery.MAX_ATTEMPTS)
    Notification.objects.filter(pk=lost.pk).update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert delivery.requeue_stalled() == 0
    lost.refresh_from_db()
    assert lost.status == "failed" and "worker lost" in lost.last_error and sent == []


def test_a_task_queued_before_the_upgrade_is_sent_once(hook, sent):
    alert = make_alert()
    assert send_notification.apply(args=(alert.pk, hook.pk)).result == "sent"
    assert send_notification.apply(args=(alert.pk, hook.pk)).result == "skipped"
    assert len(sent) == 1 and Notification.objects.get().due_at == alert.last_notified_at


# --- Migration -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_old_attempt_rows_become_finished_notifications():
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([("drift", "0005_alerts")])
        old = executor.loader.project_state([("drift", "0005_alerts")]).apps
        at = timezone.now()
        pks = _old_rows(old, at)

        executor = MigrationExecutor(connection)
        executor.migrate([("drift", "0006_notification_claims")])
        new = executor.loader.project_state([("drift", "0006_notification_claims")]).apps
        rows = new.get_model("drift", "Notification").objects.in_bulk(pks.values())

        executor = MigrationExecutor(connection)
        executor.migrate([("drift", "0005_alerts")])  # and back: one attempt row each again
        reversed_rows = old.get_model("drift", "Notification").objects.in_bulk(pks.values())
    finally:
        MigrationExecutor(connection).migrate(leaves)

    assert [reversed_rows[pks[name]].ok for name in ("sent", "failed", "same_moment")] == [True, False, True]
    assert reversed_rows[pks["failed"]].sent_at == at - timedelta(minutes=1)

    sent, failed, same_moment = (rows[pks[name]] for name in ("sent", "failed", "same_moment"))
    assert (sent.status, sent.attempts, sent.sent_at, sent.due_at) == ("sent", 1, at, at)
    assert (failed.status, failed.sent_at, failed.last_error) == ("failed", None, "HTTP 503 from the webhook.")
    earlier = at - timedelta(minutes=1)
    assert failed.attempt_log == [
        {"attempt": 1, "at": earlier.isoformat(), "outcome": "failed", "error": failed.last_error}
    ]
    assert same_moment.due_at == at + timedelta(microseconds=1)  # unique per (alert, channel, due_at)
    assert len({row.delivery_id for row in rows.values()}) == 3


def _old_rows(apps, at) -> dict[str, int]:
    rule = apps.get_model("drift", "AlertRule").objects.create(name="old", kind="device_offline")
    channel = apps.get_model("drift", "Channel").objects.create(name="old", kind="webhook", target="https://x")
    moments = {"first_fired_at": at, "last_fired_at": at, "last_true_at": at, "changed_at": at}
    alert = apps.get_model("drift", "Alert").objects.create(rule=rule, subject="s", window_started_at=at, **moments)
    rows = {
        "sent": {"ok": True},
        "failed": {"ok": False, "error": "HTTP 503 from the webhook.", "sent_at": at - timedelta(minutes=1)},
        "same_moment": {"ok": True},
    }
    Notification = apps.get_model("drift", "Notification")
    return {
        name: Notification.objects.create(**{"alert": alert, "channel": channel, "sent_at": at, **fields}).pk
        for name, fields in rows.items()
    }
