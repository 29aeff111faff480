"""The alert lifecycle: firing → acknowledged → resolved, reopened when the condition returns.

Each evaluation locks its rule row, so two beats (or a beat and a slow previous one) evaluate a
rule one after the other and the second sees the first's ``last_notified_at``: no double
notification. A due notification is a row per channel, sent once by its task
(drift.alerts.delivery), enqueued after commit.

- An alert fires when its rule's condition holds for its subject; it resolves only once the
  condition stayed false ``clear_after_minutes`` (``last_true_at`` is older than that).
- A firing alert notifies when its last notification is older than ``action_interval_minutes``;
  an acknowledged or resolved one never does.
- Every change of the condition is a transition, counted in a window of an hour. More than
  ``max_transitions_per_hour`` marks the alert flapping: it keeps its lifecycle but stays quiet
  until the condition has not changed for a full hour.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from drift.alerts import delivery, evaluate
from drift.alerts.evaluate import Finding
from drift.models import Alert, AlertRule, AlertStatus
from sphere import live

log = logging.getLogger(__name__)
TOPIC = "drift"
FLAP_WINDOW = timedelta(hours=1)


def evaluate_rules(now: datetime | None = None) -> int:
    """Evaluate every enabled rule; returns the number of notifications enqueued."""
    now = now or timezone.now()
    enqueued = 0
    for pk in AlertRule.objects.filter(enabled=True).values_list("pk", flat=True):
        try:
            enqueued += evaluate_rule(pk, now)
        except (ValueError, ValidationError):  # one misconfigured rule must not silence the others
            log.exception("alert rule %s could not be evaluated", pk)
    return enqueued


@transaction.atomic
def evaluate_rule(pk: int, now: datetime) -> int:
    rule = AlertRule.objects.select_for_update().filter(pk=pk, enabled=True).first()
    if rule is None:
        return 0
    found = {finding.subject: finding for finding in evaluate.findings(rule, now)}
    alerts = {alert.subject: alert for alert in _alerts_to_update(rule, found)}
    channels = list(rule.channels.filter(enabled=True))
    enqueued = 0
    for subject, finding in found.items():
        enqueued += _observe_true(rule, alerts.get(subject), finding, now, channels)
    for alert in alerts.values():
        if alert.subject not in found:
            _observe_false(rule, alert, now)
    return enqueued


def _alerts_to_update(rule: AlertRule, found: dict):
    # The subjects true now, and those that were true or are still open (to count a change or resolve).
    relevant = Q(subject__in=list(found)) | ~Q(status=AlertStatus.RESOLVED) | Q(condition=True)
    return rule.alerts.select_for_update().filter(relevant)


def _observe_true(rule: AlertRule, alert: Alert | None, finding: Finding, now: datetime, channels) -> int:
    if alert is None:
        alert = _open(rule, finding, now)
    else:
        _count_change(rule, alert, True, now)
        if alert.status == AlertStatus.RESOLVED:
            _refire(alert, now)
    alert.last_true_at = now
    alert.message, alert.details = finding.message, finding.details
    due = _notification_due(rule, alert, now, channels)
    if due:
        alert.last_notified_at = now
    alert.save()  # before its notifications, which need its primary key
    return delivery.schedule(alert, channels, due_at=now) if due else 0


def _observe_false(rule: AlertRule, alert: Alert, now: datetime) -> None:
    _count_change(rule, alert, False, now)
    if alert.status != AlertStatus.RESOLVED and alert.last_true_at <= now - timedelta(minutes=rule.clear_after_minutes):
        alert.status, alert.resolved_at = AlertStatus.RESOLVED, now
        _publish("alert.resolved", alert)
    alert.save()


def _open(rule: AlertRule, finding: Finding, now: datetime) -> Alert:
    alert = Alert(
        rule=rule,
        subject=finding.subject,
        status=AlertStatus.FIRING,
        first_fired_at=now,
        last_fired_at=now,
        last_true_at=now,
        changed_at=now,
        window_started_at=now,
    )
    _publish("alert.firing", alert, finding.message)
    return alert


def _refire(alert: Alert, now: datetime) -> None:
    alert.status, alert.last_fired_at, alert.resolved_at = AlertStatus.FIRING, now, None
    alert.acknowledged_by, alert.acknowledged_at = None, None
    _publish("alert.firing", alert)


def _count_change(rule: AlertRule, alert: Alert, condition: bool, now: datetime) -> None:
    """The flapping guard's bookkeeping (single row: the caller holds its lock)."""
    if now - alert.window_started_at >= FLAP_WINDOW:
        alert.window_started_at, alert.transitions = now, 0
    if alert.condition != condition:
        alert.condition, alert.changed_at = condition, now
        alert.transitions += 1
        if alert.transitions > rule.max_transitions_per_hour:
            alert.flapping = True
    elif alert.flapping and now - alert.changed_at >= FLAP_WINDOW:
        alert.flapping = False


def _notification_due(rule: AlertRule, alert: Alert, now: datetime, channels) -> bool:
    if alert.status != AlertStatus.FIRING or alert.flapping or not channels:
        return False
    interval = timedelta(minutes=rule.action_interval_minutes)
    return alert.last_notified_at is None or now - alert.last_notified_at >= interval


@transaction.atomic
def acknowledge(alerts, by) -> int:
    """Acknowledge the firing ones among ``alerts`` (a queryset); they stop notifying."""
    now = timezone.now()
    changed = 0
    for alert in Alert.objects.select_for_update().filter(pk__in=alerts.values("pk"), status=AlertStatus.FIRING):
        alert.status, alert.acknowledged_by, alert.acknowledged_at = AlertStatus.ACKNOWLEDGED, by, now
        alert.save(update_fields=["status", "acknowledged_by", "acknowledged_at"])
        _publish("alert.acknowledged", alert)
        changed += 1
    return changed


@transaction.atomic
def resolve(alerts, by=None) -> int:
    """Resolve open alerts by hand; one whose condition still holds fires again at the next evaluation."""
    now = timezone.now()
    changed = 0
    for alert in (
        Alert.objects.select_for_update().filter(pk__in=alerts.values("pk")).exclude(status=AlertStatus.RESOLVED)
    ):
        alert.status, alert.resolved_at = AlertStatus.RESOLVED, now
        alert.save(update_fields=["status", "resolved_at"])
        _publish("alert.resolved", alert)
        changed += 1
    return changed


def _publish(event: str, alert: Alert, message: str | None = None) -> None:
    # A callable: a new alert gets its primary key when saved, after this call.
    live.publish(
        TOPIC,
        event,
        lambda: {
            "alert": alert.pk,
            "rule": alert.rule_id,
            "subject": alert.subject,
            "status": alert.status,
            "message": message or alert.message,
        },
    )
