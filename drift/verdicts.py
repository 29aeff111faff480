"""Operators' verdicts on drift events, and their delivery to the device that reported them.

pending → confirmed | rejected (an operator decides, with a note); confirmed → resolved (the drift
was dealt with, e.g. a retrained model rolled out). A verdict may be revised (confirmed ↔
rejected). The device is owed every confirmed/rejected status it has not acknowledged: it is
listed in each desired state until the device acknowledges that exact status
(``POST /api/v1/device/verdict-acks``), so a verdict reaches the device once per status
change however many syncs fail in between, and an ack of an older status never hides a newer one.
"""

from __future__ import annotations

import uuid

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from drift import hooks
from drift.models import DEVICE_VERDICTS, DriftEvent, DriftSample, DriftStatus, Verdict
from sphere import live

DRIFT_TOPIC = "drift"
ALLOWED = {
    DriftStatus.CONFIRMED: {DriftStatus.PENDING, DriftStatus.REJECTED},
    DriftStatus.REJECTED: {DriftStatus.PENDING, DriftStatus.CONFIRMED},
    DriftStatus.RESOLVED: {DriftStatus.CONFIRMED},
}
MAX_ACKS = 1000


class VerdictError(ValueError):
    pass


def decide(events, status: str, *, by=None, note: str = "") -> int:
    """Set ``status`` on the events (a queryset) that may move to it; return how many did."""
    if status not in ALLOWED:
        raise VerdictError(f"A verdict is one of {', '.join(ALLOWED)}, not {status!r}.")
    now = timezone.now()
    with transaction.atomic():
        movable = list(events.select_for_update().filter(status__in=ALLOWED[status]).values_list("pk", "status"))
        DriftEvent.objects.filter(pk__in=[pk for pk, _ in movable]).update(
            status=status, decided_by=by, decided_at=now, decision_note=note
        )
        Verdict.objects.bulk_create(
            Verdict(event_id=pk, previous_status=previous, status=status, decided_by=by, decided_at=now, note=note)
            for pk, previous in movable
        )
        for event in DriftEvent.objects.filter(pk__in=[pk for pk, _ in movable]):
            _after_decision(event)
    return len(movable)


def _after_decision(event: DriftEvent) -> None:
    live.publish(DRIFT_TOPIC, "drift.verdict", lambda: event_summary(event))
    if event.status == DriftStatus.CONFIRMED:
        _queue_samples_for_labeling(event)


def _queue_samples_for_labeling(event: DriftEvent) -> None:
    receivers = hooks.confirmed_samples_receivers()
    sample_ids = list(DriftSample.objects.filter(event=event).values_list("pk", flat=True))
    if receivers and sample_ids:
        transaction.on_commit(lambda: _hand_over(receivers, event.pk, sample_ids))


def _hand_over(receivers, event_pk: int, sample_ids: list[int]) -> None:
    for receiver in receivers:
        receiver(event_id=event_pk, sample_ids=sample_ids)


def event_summary(event: DriftEvent) -> dict:
    return {
        "id": event.pk,
        "event_id": str(event.client_id),
        "device": str(event.device_id),
        "detector": event.detector,
        "model_version": event.model_version,
        "status": event.status,
        "decided_at": event.decided_at,
        "created": event.created,
    }


# --- Delivery to the device -------------------------------------------------------------------


def owed_verdicts(device) -> list[dict]:
    """The desired state's ``verdicts``: this device's decided events it has not acknowledged.

    Written in SQL (the partial index on owed verdicts serves it): every heartbeat asks, and
    building the query through the ORM cost more server CPU than running it."""
    params = [DriftEvent._meta.get_field("device").get_db_prep_value(device.pk, connection), *DEVICE_VERDICTS]
    with connection.cursor() as cursor:
        cursor.execute(_owed_sql(), params)
        rows = cursor.fetchall()
    # A UUID column comes back as a UUID on PostgreSQL and as 32 hex digits on SQLite.
    return [{"event_id": str(uuid.UUID(str(client_id))), "status": status} for client_id, status in rows]


_OWED_SQL: str | None = None


def _owed_sql() -> str:
    global _OWED_SQL
    if _OWED_SQL is None:
        table = connection.ops.quote_name(DriftEvent._meta.db_table)
        statuses = ", ".join(["%s"] * len(DEVICE_VERDICTS))
        # Only a quoted table name and placeholders are formatted in; every value is a parameter.
        _OWED_SQL = (
            f"SELECT client_id, status FROM {table}"  # noqa: S608
            f" WHERE device_id = %s AND status IN ({statuses}) AND acknowledged_status <> status ORDER BY id"
        )
    return _OWED_SQL


def desired_state(device) -> dict:
    return {"verdicts": owed_verdicts(device)}


def acknowledge(device, acks: list[dict]) -> int:
    """Mark each acknowledged verdict delivered if its status is still the acknowledged one.
    Unknown ids, other devices' events and acks of an older status change nothing."""
    matched = Q(pk__in=[])
    for ack in acks:
        matched |= Q(client_id=ack["event_id"], status=ack["status"])
    return (
        DriftEvent.objects.filter(matched, device=device, status__in=DEVICE_VERDICTS)
        .exclude(acknowledged_status=F("status"))
        .update(acknowledged_status=F("status"), acknowledged_at=timezone.now())
    )


def parse_acks(data) -> list[dict]:
    """``{"acks": [{"event_id": <uuid>, "status": "confirmed"|"rejected"}, ...]}``; entries with
    another status are ignored (a newer device may know more), malformed ones refuse the body."""
    acks = data.get("acks") if isinstance(data, dict) else None
    if not isinstance(acks, list) or len(acks) > MAX_ACKS:
        raise VerdictError(f'Body must be an object with an "acks" list of at most {MAX_ACKS} entries.')
    parsed = []
    for position, ack in enumerate(acks):
        if not isinstance(ack, dict) or not isinstance(ack.get("event_id"), str):
            raise VerdictError(f"acks[{position}] must be an object with an event_id string.")
        try:
            event_id = uuid.UUID(ack["event_id"])
        except ValueError:
            raise VerdictError(f"acks[{position}].event_id is not a UUID.") from None
        if ack.get("status") in DEVICE_VERDICTS:
            parsed.append({"event_id": event_id, "status": ack["status"]})
    return parsed
