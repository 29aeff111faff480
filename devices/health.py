"""Device health: each device's telemetry against its own learned baseline (EyeNet's anomaly
detection, on real data).

A beat task refits every device's baseline from its last TELEMETRY_BASELINE_DAYS of heartbeats:
per metric, the median and the median absolute deviation (MAD), robust to the spikes being
looked for. Another checks each live device's latest snapshot with the modified z-score of
Iglewicz and Hoaglin, z = 0.6745 (x − median) / MAD, and flags |z| > TELEMETRY_ANOMALY_Z (3.5,
their recommended cut-off). A device is compared with itself, so a Pi that always runs hot is
normal and one that suddenly does is not. Metrics whose MAD is 0 (constant so far) are skipped
rather than flagging every change.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.models import Device, DeviceStatus, Telemetry, TelemetryBaseline
from sphere import live

METRICS = (
    "cpu_percent",
    "memory_percent",
    "temperature_c",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_ips",
    "error_rate",
)
CONSISTENCY = 0.6745  # makes the MAD of a normal distribution comparable to its standard deviation
HEALTH_TOPIC = "fleet"


def fit_baselines(now=None) -> int:
    """Refit the baseline of every device with enough recent heartbeats; return how many."""
    now = now or timezone.now()
    since = now - timedelta(days=settings.TELEMETRY_BASELINE_DAYS)
    fitted = 0
    for device_id in Telemetry.objects.filter(received_at__gte=since).values_list("device", flat=True).distinct():
        fitted += fit_baseline(device_id, since, now)
    return fitted


def fit_baseline(device_id, since, now) -> bool:
    rows = (
        Telemetry.objects.filter(device=device_id, received_at__gte=since)
        .order_by("-received_at")
        .values_list(*METRICS)[: settings.TELEMETRY_BASELINE_MAX_SAMPLES]
    )
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(
        -1, len(METRICS)
    )
    if len(values) < settings.TELEMETRY_BASELINE_MIN_SAMPLES:
        return False
    statistics = {metric: _robust(values[:, i]) for i, metric in enumerate(METRICS)}
    TelemetryBaseline.objects.update_or_create(
        device_id=device_id,
        defaults={"fitted_at": now, "samples": len(values), "statistics": {k: v for k, v in statistics.items() if v}},
    )
    return True


def _robust(column: np.ndarray) -> dict | None:
    column = column[np.isfinite(column)]
    if len(column) < settings.TELEMETRY_BASELINE_MIN_SAMPLES:
        return None
    median = float(np.median(column))
    return {"median": median, "mad": float(np.median(np.abs(column - median)))}


def check_devices(now=None) -> int:
    """Check every live device with a baseline; return how many are anomalous now."""
    now = now or timezone.now()
    live_devices = Device.objects.filter(status__in=(DeviceStatus.ONLINE, DeviceStatus.LATE))
    baselines = TelemetryBaseline.objects.filter(device__in=live_devices).select_related("device")
    return sum(_check(baseline, now) for baseline in baselines)


def anomalies_of(snapshot: dict, statistics: dict, limit: float) -> dict:
    found = {}
    for metric, stats in statistics.items():
        value = snapshot.get(metric)
        if value is None or not stats["mad"]:
            continue
        z = CONSISTENCY * (value - stats["median"]) / stats["mad"]
        if abs(z) > limit:
            found[metric] = {"value": value, "median": stats["median"], "z": round(z, 2)}
    return found


def _check(baseline: TelemetryBaseline, now) -> bool:
    found = anomalies_of(baseline.device.last_telemetry, baseline.statistics, settings.TELEMETRY_ANOMALY_Z)
    changed = bool(found) != baseline.anomalous
    baseline.anomalous, baseline.anomalies, baseline.checked_at = bool(found), found, now
    with transaction.atomic():
        baseline.save(update_fields=["anomalous", "anomalies", "checked_at"])
        if changed:
            event = "device.anomaly" if found else "device.anomaly_cleared"
            live.publish(HEALTH_TOPIC, event, {"device": str(baseline.device_id), "anomalies": found})
    return bool(found)
