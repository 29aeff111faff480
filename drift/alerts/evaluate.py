"""What each rule kind finds true right now: a list of findings, one per subject.

Read-only: the lifecycle (firing, acknowledged, resolved) is drift.alerts.services' business.

Parameters per built-in kind (each kind's ``validate`` checks them):

- ``drift_event``: ``window_minutes`` (default 60), ``detector`` (optional) — devices with
  pending drift events received in the window.
- ``incident``: ``kinds`` (list of incident kinds, default all), ``window_minutes`` (default 60)
  — incidents of those kinds updated in the window.
- ``report_drift``: ``min_share`` (0–1) — the scope's latest finished report drifted at least
  this share of its features.
- ``telemetry_threshold``: ``metric`` (a key of the heartbeat, e.g. ``latency_p95_ms``), ``op``
  (``>``, ``>=``, ``<``, ``<=``), ``threshold`` — devices whose last telemetry compares true.
- ``telemetry_anomaly``: ``metrics`` (some of devices.health.METRICS; absent: all of them),
  ``min_score`` (absent: TELEMETRY_ANOMALY_Z) — live devices whose last telemetry departs from
  their own learned baseline (devices.health) by more than that robust z-score.
- ``device_offline``: no parameters — devices of the scope that are offline.

Another app adds a kind without editing drift: register it from its AppConfig.ready() (so it
is known wherever Django runs: web, worker, beat)::

    # labeling/apps.py
    def ready(self):
        from drift.alerts.evaluate import register_kind
        from labeling import alerts

        register_kind("label_backlog", "Label backlog", alerts.validate_backlog, alerts.backlog)

    # labeling/alerts.py
    from drift.alerts.evaluate import Finding, positive_int

    def validate_backlog(parameters: dict) -> dict:      # ValueError says what is wrong
        parameters["max_pending"] = positive_int(parameters, "max_pending", 500)
        return parameters

    def backlog(rule, parameters: dict, now) -> list[Finding]:   # read-only
        pending = Sample.objects.filter(labeled=False).count()
        if pending <= parameters["max_pending"]:
            return []
        return [Finding("labeling:backlog", f"{pending} samples wait for a label.", {"pending": pending})]

The name must be an identifier of at most 40 characters, unique across apps. A finding's
``subject`` identifies what the alert is about; the same subject found again is the same alert.
``scoped_devices(rule)`` gives the devices of the rule's scope. Rules of a kind whose app is no
longer installed are skipped (logged) at evaluation and refused when edited.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, QuerySet

from devices import health
from devices.models import Device, DeviceStatus, TelemetryBaseline
from drift.alerts.registry import Finding, get_kind, register_kind
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

__all__ = ["Finding", "findings", "number", "positive_int", "register_kind", "scoped_devices", "validate"]

LOOKUPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
LIVE = (DeviceStatus.ONLINE, DeviceStatus.LATE)


def findings(rule: AlertRule, now: datetime) -> list[Finding]:
    return get_kind(rule.kind).evaluate(rule, validate(rule.kind, rule.parameters or {}), now)


def validate(kind: str, parameters: dict) -> dict:
    """The parameters with their defaults; ValueError says what is wrong."""
    if not isinstance(parameters, dict):
        raise ValueError("Parameters must be a JSON object.")
    return get_kind(kind).validate(dict(parameters))


def positive_int(parameters: dict, name: str, default: int) -> int:
    value = parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1.")
    return value


def number(parameters: dict, name: str) -> float:
    value = parameters.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number.")
    return float(value)


def _validate_drift_event(parameters: dict) -> dict:
    parameters["window_minutes"] = positive_int(parameters, "window_minutes", 60)
    if not isinstance(parameters.get("detector", ""), str):
        raise ValueError("detector must be a string.")
    return parameters


def _validate_incident(parameters: dict) -> dict:
    parameters["window_minutes"] = positive_int(parameters, "window_minutes", 60)
    kinds = parameters.setdefault("kinds", list(IncidentKind.values))
    if not isinstance(kinds, list) or not kinds or set(kinds) - set(IncidentKind.values):
        raise ValueError(f"kinds must be a non-empty list of {', '.join(IncidentKind.values)}.")
    return parameters


def _validate_report_drift(parameters: dict) -> dict:
    share = number(parameters, "min_share")
    if not 0 <= share <= 1:
        raise ValueError("min_share must be between 0 and 1.")
    return parameters


def _validate_telemetry(parameters: dict) -> dict:
    if not isinstance(parameters.get("metric"), str) or not parameters["metric"].isidentifier():
        raise ValueError("metric must name a telemetry value, e.g. latency_p95_ms.")
    if parameters.get("op") not in LOOKUPS:
        raise ValueError(f"op must be one of {', '.join(LOOKUPS)}.")
    number(parameters, "threshold")
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


def _validate_telemetry_anomaly(parameters: dict) -> dict:
    # Absent parameters stay absent: they follow devices.health (new metrics, the limit) as it changes.
    metrics = parameters.get("metrics", list(health.METRICS))
    if not isinstance(metrics, list) or not metrics or not set(metrics) <= set(health.METRICS):
        raise ValueError(f"metrics must be a non-empty list of {', '.join(health.METRICS)}.")
    if "min_score" in parameters and number(parameters, "min_score") <= 0:
        raise ValueError("min_score must be a positive number.")
    return parameters


def _telemetry_anomaly(rule: AlertRule, parameters: dict, now: datetime) -> list[Finding]:
    metrics = parameters.get("metrics", health.METRICS)
    min_score = parameters.get("min_score", settings.TELEMETRY_ANOMALY_Z)
    # Live devices only, as devices.health checks them: an offline one's snapshot is stale.
    baselines = TelemetryBaseline.objects.filter(device__in=scoped_devices(rule).filter(status__in=LIVE))
    found = []
    for baseline in baselines.select_related("device").only("statistics", "device__name", "device__last_telemetry"):
        statistics = {metric: stats for metric, stats in baseline.statistics.items() if metric in metrics}
        anomalies = health.anomalies_of(baseline.device.last_telemetry or {}, statistics, min_score)
        if anomalies:
            found.append(_anomaly_finding(baseline.device, anomalies))
    return found


def _anomaly_finding(device: Device, anomalies: dict) -> Finding:
    departures = [
        {"metric": metric, "value": found["value"], "median": found["median"], "score": found["z"]}
        for metric, found in sorted(anomalies.items())
    ]
    summary = ", ".join(f"{d['metric']} = {d['value']} (median {d['median']}, z {d['score']})" for d in departures)
    return Finding(
        f"device:{device.pk}", f"Device {device.name} departs from its baseline: {summary}.", {"anomalies": departures}
    )


def _register_builtins() -> None:
    built_in = {
        AlertKind.DRIFT_EVENT: (_validate_drift_event, _drift_event),
        AlertKind.INCIDENT: (_validate_incident, _incident),
        AlertKind.REPORT_DRIFT: (_validate_report_drift, _report_drift),
        AlertKind.TELEMETRY_THRESHOLD: (_validate_telemetry, _telemetry_threshold),
        AlertKind.TELEMETRY_ANOMALY: (_validate_telemetry_anomaly, _telemetry_anomaly),
        AlertKind.DEVICE_OFFLINE: (_validate_nothing, _device_offline),
    }
    for kind, (validate_parameters, evaluate_rule) in built_in.items():
        register_kind(kind.value, kind.label, validate_parameters, evaluate_rule)


_register_builtins()
