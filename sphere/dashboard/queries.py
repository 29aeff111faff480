"""What the fleet and device pages read, at a cost that does not grow with the big tables
(telemetry, drift events, packages): time series are aggregated in the database to at most
MAX_POINTS rows, lists are pages or the latest few, each served by an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Avg, Count, FloatField, Func, Q
from django.db.models.functions import Floor

from devices.models import Device, DeviceGroup, DeviceStatus, Telemetry
from drift.models import DriftEvent
from registry.models import RolloutAssignment
from sphere.admin_paginator import BoundedCountPaginator

MAX_POINTS = 300
CHARTED = ("cpu_percent", "memory_percent", "temperature_c", "latency_p50_ms", "latency_p95_ms")
DEVICES_PER_PAGE = 50
EVENTS_PER_PAGE = 20
GROUPS_SHOWN = 24
# How far back the reported model versions are read: the newest heartbeats only, so a device
# with years of telemetry costs the same as one with a week of it.
HISTORY_SCAN = 20_000
HISTORY_ROWS = 20
REPORTED_JSON = ("last_telemetry", "runtime", "bundle_outcome", "attributes")


# --- Fleet ---------------------------------------------------------------------------------------


def device_page(status: str | None, number):
    # The list shows none of the reported JSON (telemetry, runtime): not read for 50 rows a page.
    devices = Device.objects.select_related("group").defer(*REPORTED_JSON).order_by("name", "pk")
    if status:
        devices = devices.filter(status=status)
    return BoundedCountPaginator(devices, DEVICES_PER_PAGE).get_page(number)


@dataclass
class GroupCounts:
    group: DeviceGroup | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def group_counts() -> tuple[list[GroupCounts], bool]:
    """The first GROUPS_SHOWN groups by name (and the ungrouped devices) with their devices per
    status, in one GROUP BY over the devices; whether there are more groups than shown."""
    groups = list(DeviceGroup.objects.order_by("name")[: GROUPS_SHOWN + 1])
    more, groups = len(groups) > GROUPS_SHOWN, groups[:GROUPS_SHOWN]
    rows = (
        Device.objects.filter(Q(group__in=groups) | Q(group__isnull=True))
        .values_list("group", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts = {group.pk: dict.fromkeys(DeviceStatus.values, 0) for group in groups}
    counts[None] = dict.fromkeys(DeviceStatus.values, 0)
    for group_id, status, n in rows:
        counts[group_id][status] = n
    shown = [GroupCounts(group, counts[group.pk]) for group in groups]
    if sum(counts[None].values()):
        shown.append(GroupCounts(None, counts[None]))
    return shown, more


# --- One device ----------------------------------------------------------------------------------


def device(pk) -> Device:
    return Device.objects.select_related("group").prefetch_related("tags").get(pk=pk)


class EpochSeconds(Func):
    """Seconds since 1970 of a datetime column, as a float, on both supported databases."""

    output_field = FloatField()
    template = "CAST(EXTRACT(EPOCH FROM %(expressions)s) AS double precision)"

    def as_sqlite(self, compiler, connection, **extra):
        # Django keeps datetimes in SQLite as UTC text, which julianday() reads.
        return self.as_sql(compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)")


@dataclass
class TelemetrySeries:
    start: datetime
    end: datetime
    bucket_s: float
    points: dict[str, list[tuple[float, float]]]
    heartbeats: int


def telemetry_series(device: Device, window: timedelta, now: datetime) -> TelemetrySeries:
    """The device's charted metrics over ``window`` up to ``now``, averaged per time bucket:
    at most MAX_POINTS points per metric however many heartbeats the window holds. One query,
    an index range scan on (device, received_at) aggregated in the database."""
    start = now - window
    bucket_s = window.total_seconds() / MAX_POINTS
    bucket = Floor((EpochSeconds("received_at") - start.timestamp()) / bucket_s)
    rows = (
        Telemetry.objects.filter(device=device, received_at__gt=start, received_at__lte=now)
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(heartbeats=Count("pk"), **{name: Avg(name) for name in CHARTED})
        .order_by("bucket")
    )
    points: dict[str, list[tuple[float, float]]] = {name: [] for name in CHARTED}
    heartbeats = 0
    for row in rows:
        # Plotted at the middle of its bucket; the last bucket may be cut at ``now``.
        index = min(int(row["bucket"]), MAX_POINTS - 1)
        at = start.timestamp() + (index + 0.5) * bucket_s
        heartbeats += row["heartbeats"]
        for name in CHARTED:
            if row[name] is not None:
                points[name].append((at, row[name]))
    return TelemetrySeries(start, now, bucket_s, points, heartbeats)


def device_event_page(device: Device, number):
    # The (device, -created) index gives the order; the count stops at the paginator's cap.
    events = DriftEvent.objects.filter(device=device).order_by("-created", "-pk")
    return BoundedCountPaginator(events, EVENTS_PER_PAGE).get_page(number)


@dataclass
class VersionChange:
    at: datetime
    version: str
    source: str  # "reported" (heartbeats) or "rollout"
    until: datetime | None = None
    at_least: bool = False  # the first version in the scanned heartbeats: it may have started earlier
    assignment: RolloutAssignment | None = None


def reported_versions(device: Device) -> list[VersionChange]:
    """Each change of the model version the device reported, newest first, read from its last
    HISTORY_SCAN heartbeats with a window function: one query of bounded cost."""
    recent = (
        Telemetry.objects.filter(device=device)
        .exclude(model_version="")
        .order_by("-received_at", "-pk")
        .values("id", "received_at", "model_version")[:HISTORY_SCAN]
    )
    inner, params = recent.query.sql_with_params()
    # The inner SQL is Django's own, its values bound as parameters; nothing here comes from a user.
    sql = (
        "SELECT id, received_at, model_version, previous, scanned FROM ("  # noqa: S608
        "  SELECT id, received_at, model_version,"
        "    LAG(model_version) OVER (ORDER BY received_at, id) AS previous,"
        "    COUNT(*) OVER () AS scanned"
        f"  FROM ({inner}) recent"
        ") changes WHERE previous IS NULL OR previous <> model_version ORDER BY received_at DESC, id DESC LIMIT %s"
    )
    rows = list(Telemetry.objects.raw(sql, [*params, HISTORY_ROWS]))
    changes, until = [], None
    for row in rows:
        at_least = row.previous is None and row.scanned >= HISTORY_SCAN
        changes.append(VersionChange(row.received_at, row.model_version, "reported", until, at_least))
        until = row.received_at
    return changes


def assignments(device: Device) -> list[VersionChange]:
    """The device's rollout assignments, newest first (the (device, -assigned_at) index)."""
    rows = (
        RolloutAssignment.objects.filter(device=device)
        .select_related("rollout__version__family", "version__family")
        .order_by("-assigned_at", "-pk")[:HISTORY_ROWS]
    )
    return [VersionChange(row.assigned_at, row.version.label, "rollout", assignment=row) for row in rows]


def model_history(device: Device, with_rollouts: bool) -> list[VersionChange]:
    history = reported_versions(device) + (assignments(device) if with_rollouts else [])
    return sorted(history, key=lambda change: change.at, reverse=True)
