"""Device health: each device is compared with its own telemetry baseline (median and MAD)."""

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from conftest import heartbeat_body
from devices import health, services
from devices.models import DeviceStatus, TelemetryBaseline

pytestmark = pytest.mark.django_db
NOW = timezone.now()


def history(persona, temperatures, latencies=None):
    for i, temperature in enumerate(temperatures):
        latency = None if latencies is None else latencies[i]
        body = heartbeat_body(temperature_c=float(temperature), latency_p95_ms=latency)
        services.record_heartbeat(persona.device, body, now=NOW - timedelta(hours=1, minutes=len(temperatures) - i))


def beat(persona, **metrics):
    services.record_heartbeat(persona.device, heartbeat_body(**metrics), now=NOW)
    persona.device.refresh_from_db()


def test_a_baseline_is_the_median_and_mad_of_the_devices_own_recent_telemetry(device_a):
    temperatures = np.random.default_rng(1).normal(50, 2, 60)
    history(device_a, temperatures)
    assert health.fit_baselines(now=NOW) == 1
    baseline = TelemetryBaseline.objects.get(device=device_a.device)
    median = np.median(temperatures)
    assert baseline.samples == 60
    assert baseline.statistics["temperature_c"]["median"] == pytest.approx(median)
    assert baseline.statistics["temperature_c"]["mad"] == pytest.approx(np.median(np.abs(temperatures - median)))
    assert "cpu_percent" not in baseline.statistics or baseline.statistics["cpu_percent"]["mad"] >= 0


def test_a_device_running_far_hotter_than_usual_is_flagged_and_cleared_when_it_cools(device_a):
    history(device_a, np.random.default_rng(2).normal(50, 1, 60))
    health.fit_baselines(now=NOW)
    beat(device_a, temperature_c=75.0)
    assert health.check_devices(now=NOW) == 1
    baseline = TelemetryBaseline.objects.get()
    assert baseline.anomalous and baseline.anomalies["temperature_c"]["value"] == 75.0
    assert baseline.anomalies["temperature_c"]["z"] > 3.5
    beat(device_a, temperature_c=50.5)
    assert health.check_devices(now=NOW) == 0
    assert not TelemetryBaseline.objects.get().anomalous


def test_each_device_is_compared_with_itself_not_with_the_fleet(device_a, device_b):
    history(device_a, np.random.default_rng(3).normal(50, 1, 60))
    history(device_b, np.random.default_rng(4).normal(80, 1, 60))  # always hot: normal for it
    health.fit_baselines(now=NOW)
    beat(device_a, temperature_c=50.0)
    beat(device_b, temperature_c=80.5)
    assert health.check_devices(now=NOW) == 0


def test_too_little_history_gives_no_baseline(device_a, settings):
    settings.TELEMETRY_BASELINE_MIN_SAMPLES = 30
    history(device_a, [50.0] * 10)
    assert health.fit_baselines(now=NOW) == 0
    assert not TelemetryBaseline.objects.exists()


def test_a_constant_metric_is_not_flagged_on_its_first_change(device_a):
    history(device_a, [50.0] * 40)
    health.fit_baselines(now=NOW)
    beat(device_a, temperature_c=51.0)
    assert health.check_devices(now=NOW) == 0


def test_offline_devices_are_not_checked(device_a):
    history(device_a, np.random.default_rng(5).normal(50, 1, 60))
    health.fit_baselines(now=NOW)
    beat(device_a, temperature_c=90.0)
    device_a.device.status = DeviceStatus.OFFLINE
    device_a.device.save()
    assert health.check_devices(now=NOW) == 0


def test_health_tasks_are_scheduled(db):
    from django_celery_beat.models import PeriodicTask

    tasks = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {"devices.fit_telemetry_baselines", "devices.check_telemetry_anomalies"} <= tasks


def test_the_health_admin_lists_anomalous_devices_with_their_metrics(device_a, client, operator):
    history(device_a, np.random.default_rng(6).normal(50, 1, 60))
    health.fit_baselines(now=NOW)
    beat(device_a, temperature_c=75.0)
    health.check_devices(now=NOW)
    client.force_login(operator)
    page = client.get("/admin/devices/telemetrybaseline/?anomalous__exact=1")
    assert page.status_code == 200 and b"temperature_c (z " in page.content
