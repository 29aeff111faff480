"""Keeping incidents up to date: recent drift events are re-triaged (``drift.triage``) against
the fleet as it is now, and each resulting group is stored as an Incident.

Re-running is safe and cheap: a group keeps the incident most of its events already belong to,
so incidents keep their ids as they grow; incidents merged into another by a bridging event are
removed. Only events within DRIFT_TRIAGE_LOOKBACK_H are re-triaged; older incidents stay as
they were last classified.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.models import Device, DeviceStatus
from drift import triage
from drift.models import DriftEvent, Incident
from sphere import live

DRIFT_TOPIC = "drift"
ACTIVE_STATUSES = (DeviceStatus.ONLINE, DeviceStatus.LATE)


def triage_recent(now=None) -> list[Incident]:
    now = now or timezone.now()
    rows = list(
        DriftEvent.objects.filter(created__gte=now - timedelta(hours=settings.DRIFT_TRIAGE_LOOKBACK_H)).values_list(
            "pk", "device_id", "created", "detector", "incident_id"
        )
    )
    if not rows:
        return []
    signals = [triage.EventSignal(pk, device_id, created, detector) for pk, device_id, created, detector, _ in rows]
    current = {pk: incident_id for pk, *_, incident_id in rows}
    results = triage.triage(
        signals, fleet_profiles(), timedelta(minutes=settings.DRIFT_INCIDENT_WINDOW_MIN), **_thresholds()
    )
    with transaction.atomic():
        stored = [_store(result, current) for result in results]
        _remove_emptied({incident_id for incident_id in current.values() if incident_id})
    return stored


def fleet_profiles() -> list[triage.DeviceProfile]:
    devices = Device.objects.values_list("pk", "group__name", "location", "hardware", "model_version", "status")
    return [
        triage.DeviceProfile(pk, group, location or None, hardware or None, version or None, status in ACTIVE_STATUSES)
        for pk, group, location, hardware, version, status in devices
    ]


def _thresholds() -> dict:
    return {
        "population_share": settings.DRIFT_POPULATION_SHARE,
        "cohort_share": settings.DRIFT_COHORT_SHARE,
        "min_cohort_devices": settings.DRIFT_MIN_COHORT_DEVICES,
    }


def _store(result: triage.Incident, current: dict[int, int | None]) -> Incident:
    event_ids = [event.event_id for event in result.events]
    owners = Counter(current[pk] for pk in event_ids if current[pk])
    incident = Incident.objects.filter(pk=owners.most_common(1)[0][0]).first() if owners else None
    previous = (incident.kind, incident.slice_attribute, incident.slice_value) if incident else None
    incident = incident or Incident()
    _describe(incident, result)
    incident.save()
    DriftEvent.objects.filter(pk__in=event_ids).exclude(incident=incident).update(incident=incident)
    if previous != (incident.kind, incident.slice_attribute, incident.slice_value):
        live.publish(DRIFT_TOPIC, "drift.incident", incident_summary(incident))
    return incident


def _describe(incident: Incident, result: triage.Incident) -> None:
    classification = result.classification
    attribute, value = classification.slice or ("", "")
    incident.kind = str(classification.kind)
    incident.slice_attribute, incident.slice_value = attribute, str(value)
    incident.evidence = classification.evidence
    incident.started_at, incident.ended_at = result.start, result.end
    incident.device_count, incident.event_count = len(result.devices), len(result.events)


def _remove_emptied(incident_ids: set[int]) -> None:
    Incident.objects.filter(pk__in=incident_ids, events=None).delete()


def incident_summary(incident: Incident) -> dict:
    return {
        "id": incident.pk,
        "kind": incident.kind,
        "slice": [incident.slice_attribute, incident.slice_value] if incident.slice_attribute else None,
        "devices": incident.device_count,
        "events": incident.event_count,
        "started_at": incident.started_at,
        "ended_at": incident.ended_at,
        "rule": incident.evidence.get("rule"),
    }
