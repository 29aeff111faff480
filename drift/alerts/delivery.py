"""Notifications, each sent once per due notification although its task may run twice.

The lifecycle (drift.alerts.services) creates one Notification row per channel when an alert is
due, unique on (alert, channel, due_at), and enqueues it by primary key after commit. The task
claims the row with a conditional UPDATE (pending → sending); a redelivered or duplicated task
finds it claimed or sent and does nothing. A claim whose task's worker died (no outcome after
SENDING_TIMEOUT) may be claimed again: at-least-once towards the transport, so every attempt
carries the row's ``delivery_id`` (the webhook's X-Sphere-Delivery header, the e-mail's
Message-ID) for receivers to drop a repeat. Transient transport errors go back to pending with
a backoff, up to MAX_ATTEMPTS; each attempt is written to the row's ``attempt_log``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from drift.alerts import transports
from drift.models import Alert, Channel, Notification, NotificationStatus

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 4  # the first and three retries
BACKOFF_S = 30  # doubled after each failed attempt: 30 s, 1 min, 2 min
# Longer than send_notification's hard time limit: by then the claiming worker is surely gone.
SENDING_TIMEOUT = timedelta(minutes=5)
# A queued task normally starts well within this; a row waiting longer lost its task.
STALL_GRACE = timedelta(minutes=2)
ERROR_MAX_LENGTH = 2000


class RetryLater(Exception):
    """A transient failure with attempts left: run the task again in ``countdown`` seconds."""

    def __init__(self, countdown: int):
        super().__init__(f"retry in {countdown} s")
        self.countdown = countdown


def schedule(alert: Alert, channels: list[Channel], due_at: datetime) -> int:
    """Create the alert's notifications due at ``due_at`` and enqueue them after commit."""
    created = 0
    for channel in channels:
        notification, new = Notification.objects.get_or_create(
            alert=alert, channel=channel, due_at=due_at, defaults={"next_attempt_at": due_at}
        )
        if new:
            _enqueue_on_commit(notification.pk)
            created += 1
    return created


def _enqueue_on_commit(pk: int) -> None:
    from drift.tasks import send_notification  # drift.tasks imports this module

    send_notification.delay_on_commit(pk)


def deliver(pk: int) -> str:
    """Claim and send one notification: "sent", "failed" or "skipped" (someone else's, or done).
    Raises RetryLater after a transient failure with attempts left.

    Not atomic on purpose: the claim must be committed before sending, so a concurrent run
    sees it while this one talks to the transport."""
    notification = _claim(pk)
    if notification is None:
        return "skipped"
    if not notification.channel.enabled:
        _finish(notification, NotificationStatus.FAILED, error="The channel is disabled.")
        return "failed"
    try:
        transports.send(notification.channel, payload(notification), str(notification.delivery_id))
    except transports.TransportError as exc:
        return _failed(notification, exc)
    _finish(notification, NotificationStatus.SENT)
    return "sent"


def _claim(pk: int) -> Notification | None:
    now = timezone.now()
    claimable = Q(status=NotificationStatus.PENDING) | Q(status=NotificationStatus.SENDING, next_attempt_at__lte=now)
    # One UPDATE decides: of two concurrent runs, the second finds the row no longer claimable.
    claimed = Notification.objects.filter(claimable, pk=pk, attempts__lt=MAX_ATTEMPTS).update(
        status=NotificationStatus.SENDING,
        attempts=F("attempts") + 1,
        claimed_at=now,
        next_attempt_at=now + SENDING_TIMEOUT,
    )
    if not claimed:
        return None
    return Notification.objects.select_related("alert__rule", "channel").get(pk=pk)


def _failed(notification: Notification, exc: transports.TransportError) -> str:
    if exc.transient and notification.attempts < MAX_ATTEMPTS:
        countdown = BACKOFF_S * 2 ** (notification.attempts - 1)
        _finish(notification, NotificationStatus.PENDING, error=str(exc), retry_in=countdown)
        raise RetryLater(countdown) from exc
    _finish(notification, NotificationStatus.FAILED, error=str(exc))
    return "failed"


def _finish(notification: Notification, status: str, *, error: str = "", retry_in: int = 0) -> None:
    now, error = timezone.now(), error[:ERROR_MAX_LENGTH]
    outcome = "retry" if status == NotificationStatus.PENDING else status
    entry = {"attempt": notification.attempts, "at": now.isoformat(), "outcome": outcome, "error": error}
    fields = {"status": status, "attempt_log": [*notification.attempt_log, entry]}
    if status == NotificationStatus.SENT:
        fields["sent_at"] = now
    if error:
        fields["last_error"] = error
    if status == NotificationStatus.PENDING:
        fields["next_attempt_at"] = now + timedelta(seconds=retry_in)
    # Only while this attempt's claim stands: once taken over (SENDING_TIMEOUT), the newer attempt reports.
    mine = Notification.objects.filter(
        pk=notification.pk, status=NotificationStatus.SENDING, attempts=notification.attempts
    )
    if not mine.update(**fields):
        log.warning("notification %s: attempt %s ended after another took over", notification.pk, notification.attempts)


def payload(notification: Notification) -> dict:
    alert = notification.alert
    return {
        "delivery": str(notification.delivery_id),  # in the signed body too, not only in a header
        "alert": alert.pk,
        "rule": alert.rule.name,
        "kind": alert.rule.kind,
        "subject": alert.subject,
        "status": alert.status,
        "message": alert.message,
        "details": alert.details,
        "first_fired_at": alert.first_fired_at,
        "last_fired_at": alert.last_fired_at,
        "flapping": alert.flapping,
    }


def requeue_stalled(now: datetime | None = None, limit: int = 100) -> int:
    """Enqueue again the notifications whose task was lost (never ran, or its worker died while
    sending); give up on those out of attempts. Returns how many were enqueued."""
    now = now or timezone.now()
    unfinished = (NotificationStatus.PENDING, NotificationStatus.SENDING)
    stalled = Notification.objects.filter(status__in=unfinished, next_attempt_at__lt=now - STALL_GRACE)
    _give_up(stalled.filter(attempts__gte=MAX_ATTEMPTS))
    enqueued = 0
    for pk in list(stalled.order_by("next_attempt_at").values_list("pk", flat=True)[:limit]):
        # Still stalled (not claimed meanwhile), and not requeued again before another grace period.
        if stalled.filter(pk=pk).update(next_attempt_at=now):
            _enqueue_on_commit(pk)
            enqueued += 1
    return enqueued


def _give_up(exhausted: QuerySet[Notification]) -> None:
    # Only a lost 'sending' claim can be out of attempts while unfinished (see _failed).
    exhausted.update(status=NotificationStatus.FAILED, last_error="No outcome from the last attempt (worker lost).")


def deliver_legacy(alert_pk: int, channel_pk: int) -> str:
    """A task queued before notifications were rows (its arguments: alert, channel): its row is
    the alert's latest due notification for that channel."""
    alert = Alert.objects.filter(pk=alert_pk, last_notified_at__isnull=False).first()
    if alert is None or not Channel.objects.filter(pk=channel_pk).exists():
        return "skipped"
    notification, _ = Notification.objects.get_or_create(
        alert=alert, channel_id=channel_pk, due_at=alert.last_notified_at, defaults={"next_attempt_at": timezone.now()}
    )
    return deliver(notification.pk)
