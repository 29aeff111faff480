"""What each rule kind finds true right now: a list of findings, one per subject.

Read-only: the lifecycle (firing, acknowledged, resolved) is drift.alerts.services' business.

Parameters per kind (``validate`` checks them):

- ``drift_event``: ``window_minutes`` (default 60), ``detector`` (optional) — devices with
  pending drift events received in the window.
- ``incident``: ``kinds`` (list of incident kinds, default all), ``window_minutes`` (default 60)
  — incidents of those kinds updated in the window.
- ``report_drift``: ``min_share`` (0–1) — the scope's latest finished report drifted at least
  this share of its features.
- ``telemetry_threshold``: ``metric`` (a key of the heartbeat, e.g. ``latency_p95_ms``), ``op``
  (``>``, ``>=``, ``<``, ``<=``), ``threshold`` — devices whose last telemetry compares true.
- ``device_offline``: no parameters — devices of the scope that are offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Max, QuerySet

from devices.models import Device, DeviceStatus
from drift.models import (
    AlertKind,
    AlertRule,
    DriftEvent,
    DriftReport,
    DriftStatus,
    Incident,
    IncidentKind,
    ReportScope,
    ReportStatus,
)

LOOKUPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


@dataclass(frozen=True)
class Finding:
    subject: str
    message: str
    details: dict = field(default_factory=dict)


def findings(rule: AlertRule, now: datetime) -> list[Finding]:
    return EVALUATORS[rule.kind](rule, validate(rule.kind, rule.parameters or {}), now)


def validate(kind: str, parameters: dict) -> dict:
    """The parameters with their defaults; ValueError says what is wrong."""
    if not isinstance(parameters, dict):
        raise ValueError("Parameters must be a JSON object.")
    if kind not in VALIDATORS:
        raise ValueError(f"Unknown rule kind {kind!r}.")
    return VALIDATORS[kind](dict(parameters))


def _positive_int(parameters: dict, name: str, default: int) -> int:
    value = parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1.")
    return value


def _number(parameters: dict, name: str) -> float:
    value = parameters.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number.")
    return float(value)


def _validate_drift_event(parameters: dict) -> dict:
    parameters["window_minutes"] = _positive_int(parameters, "window_minutes", 60)
    if not isinstance(parameters.get("detector", ""), str):
        raise ValueError("detector must be a string.")
    return parameters


def _validate_incident(parameters: dict) -> dict:
    parameters["window_minutes"] = _positive_int(parameters, "window_minutes", 60)
    kinds = parameters.setdefault("kinds", list(IncidentKind.values))
    if not isinstance(kinds, list) or not kinds or set(kinds) - set(IncidentKind.values):
        raise ValueError(f"kinds must be a non-empty list of {', '.join(IncidentKind.values)}.")
    return parameters


def _validate_report_drift(parameters: dict) -> dict:
    share = _number(parameters, "min_share")
    if not 0 <= share <= 1:
        raise ValueError("min_share must be between 0 and 1.")
    return parameters


def _validate_telemetry(parameters: dict) -> dict:
    if not isinstance(parameters.get("metric"), str) or not parameters["metric"].isidentifier():
        raise ValueError("metric must name a telemetry value, e.g. latency_p95_ms.")
    if parameters.get("op") not in LOOKUPS:
        raise ValueError(f"op must be one of {', '.join(LOOKUPS)}.")
    _number(parameters, "threshold")
    return parameters


def _validate_nothing(parameters: dict) -> dict:
    return parameters


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def scoped_devices(rule: AlertRule) -> QuerySet[Device]:
    devices = Device.objects.all()
    if rule.scope == ReportScope.GROUP:
        return devices.filter(group__name=rule.scope_value)
    if rule.scope == ReportScope.DEVICE:
        return devices.filter(pk=rule.scope_value)
    if rule.scope == ReportScope.MODEL_VERSION:
        return devices.filter(model_version=rule.scope_value)
    return devices


def _device_offline(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    offline = scoped_devices(rule).filter(status=DeviceStatus.OFFLINE).only("pk", "name", "last_seen_at")
    return [
        Finding(f"device:{device.pk}", f"Device {device.name} is offline.", {"last_seen_at": _iso(device.last_seen_at)})
        for device in offline
    ]


def _telemetry_threshold(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    metric, op, threshold = parameters["metric"], parameters["op"], parameters["threshold"]
    # A JSON key comparison in the database (numeric on SQLite and PostgreSQL's jsonb alike).
    matching = scoped_devices(rule).filter(**{f"last_telemetry__{metric}__{LOOKUPS[op]}": threshold})
    return [
        Finding(
            f"device:{device.pk}",
            f"Device {device.name}: {metric} = {device.last_telemetry.get(metric)} ({op} {threshold}).",
            {"metric": metric, "value": device.last_telemetry.get(metric), "op": op, "threshold": threshold},
        )
        for device in matching.only("pk", "name", "last_telemetry")
    ]


def _drift_event(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    events = DriftEvent.objects.filter(
        status=DriftStatus.PENDING,
        received_at__gte=now - timedelta(minutes=parameters["window_minutes"]),
        device__in=scoped_devices(rule),
    )
    if parameters.get("detector"):
        events = events.filter(detector=parameters["detector"])
    per_device = events.values("device_id", "device__name").annotate(n=Count("pk"), last=Max("created"))
    return [
        Finding(
            f"device:{row['device_id']}",
            f"{row['n']} pending drift event(s) on {row['device__name']}.",
            {"events": row["n"], "last_event_at": _iso(row["last"])},
        )
        for row in per_device.order_by()
    ]


def _incident(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    incidents = Incident.objects.filter(
        kind__in=parameters["kinds"], updated_at__gte=now - timedelta(minutes=parameters["window_minutes"])
    )
    if rule.scope != ReportScope.FLEET:
        incidents = incidents.filter(events__device__in=scoped_devices(rule)).distinct()
    return [
        Finding(
            f"incident:{incident.pk}",
            f"{incident} ({incident.device_count} device(s), {incident.event_count} event(s)).",
            {"kind": incident.kind, "devices": incident.device_count, "events": incident.event_count},
        )
        for incident in incidents
    ]


def _report_drift(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    latest = (
        DriftReport.objects.filter(status=ReportStatus.DONE, scope=rule.scope, scope_value=rule.scope_value)
        .order_by("-current_end", "-pk")
        .first()
    )
    if latest is None or latest.share_of_drifted_features is None:
        return []
    if latest.share_of_drifted_features < parameters["min_share"]:
        return []
    share = latest.share_of_drifted_features
    return [
        Finding(
            f"{rule.scope}:{rule.scope_value}" if rule.scope_value else rule.scope,
            f"Drift report {latest}: {share:.0%} of features drifted (≥ {parameters['min_share']:.0%}).",
            {"report": latest.pk, "share": share, "dataset_drift": latest.dataset_drift},
        )
    ]


Evaluator = Callable[[AlertRule, dict, datetime], list[Finding]]
EVALUATORS: dict[str, Evaluator] = {
    AlertKind.DRIFT_EVENT: _drift_event,
    AlertKind.INCIDENT: _incident,
    AlertKind.REPORT_DRIFT: _report_drift,
    AlertKind.TELEMETRY_THRESHOLD: _telemetry_threshold,
    AlertKind.DEVICE_OFFLINE: _device_offline,
}
VALIDATORS: dict[str, Callable[[dict], dict]] = {
    AlertKind.DRIFT_EVENT: _validate_drift_event,
    AlertKind.INCIDENT: _validate_incident,
    AlertKind.REPORT_DRIFT: _validate_report_drift,
    AlertKind.TELEMETRY_THRESHOLD: _validate_telemetry,
    AlertKind.DEVICE_OFFLINE: _validate_nothing,
}
