"""Status: new → online → late → offline by due times, swept by an index scan, published live."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conftest import heartbeat_body, make_device
from devices import services
from devices.models import Device, DeviceGroup, DeviceStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch):
    """Live events as they are sent after commit, in order, with lazy payloads evaluated."""
    events = []

    def record(topic, event, data):
        events.append((topic, event, data() if callable(data) else data))

    monkeypatch.setattr("sphere.live._send", record)
    return events


@pytest.fixture
def committing(django_capture_on_commit_callbacks):
    """Run a block and then its on-commit callbacks, as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def beat(device, at):
    services.record_heartbeat(device, heartbeat_body(), now=at)
    device.refresh_from_db()


def test_a_device_is_new_until_its_first_heartbeat(device_a):
    assert device_a.device.status == DeviceStatus.NEW
    beat(device_a.device, timezone.now())
    assert device_a.device.status == DeviceStatus.ONLINE


def test_it_goes_late_after_the_period_and_offline_after_the_grace(db):
    group = DeviceGroup.objects.create(name="fast", heartbeat_period_s=10, grace_s=20)
    device = make_device("cam", group).device
    start = timezone.now()
    beat(device, start)
    assert services.sweep_device_status(start + timedelta(seconds=9)) == {"late": 0, "offline": 0}
    assert services.sweep_device_status(start + timedelta(seconds=11)) == {"late": 1, "offline": 0}
    device.refresh_from_db()
    assert device.status == DeviceStatus.LATE
    assert services.sweep_device_status(start + timedelta(seconds=31)) == {"late": 0, "offline": 1}
    device.refresh_from_db()
    assert device.status == DeviceStatus.OFFLINE


def test_the_default_schedule_applies_without_a_group(device_a, settings):
    start = timezone.now()
    beat(device_a.device, start)
    period = settings.DEVICE_HEARTBEAT_PERIOD_S
    assert device_a.device.late_at == start + timedelta(seconds=period)
    assert device_a.device.offline_at == start + timedelta(seconds=period + settings.DEVICE_HEARTBEAT_GRACE_S)


def test_a_heartbeat_brings_an_offline_device_back_online(device_a):
    start = timezone.now()
    beat(device_a.device, start)
    services.sweep_device_status(start + timedelta(days=1))
    beat(device_a.device, start + timedelta(days=1, seconds=1))
    assert device_a.device.status == DeviceStatus.ONLINE


def test_a_device_shutting_down_goes_offline_at_once(api, device_a, published, committing):
    with committing():
        api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", **device_a.auth)
    with committing():
        body = heartbeat_body(shutting_down=True)
        response = api.post("/api/v1/device/heartbeat", body, format="json", **device_a.auth)
    assert response.status_code == 200
    device_a.device.refresh_from_db()
    assert device_a.device.status == DeviceStatus.OFFLINE
    assert device_a.device.offline_at is None  # nothing for the sweep to do
    statuses = [data["status"] for _, event, data in published if event == "device.status"]
    assert statuses == ["online", "offline"]


def test_status_changes_are_published_with_fresh_counts(device_a, device_b, published, committing):
    start = timezone.now()
    beat(device_a.device, start)
    beat(device_b.device, start)
    with committing():
        services.sweep_device_status(start + timedelta(seconds=61))
    changes = [(d["name"], d["previous"], d["status"]) for _, event, d in published if event == "device.status"]
    assert sorted(changes) == [("device-a", "online", "late"), ("device-b", "online", "late")]
    counts = [data for _, event, data in published if event == "fleet.counts"]
    assert len(counts) == 1, "one counts event per sweep, not one per device"
    assert counts[0]["late"] == 2 and counts[0]["total"] == 2
    assert all(topic == "fleet" for topic, _, _ in published)


def test_events_are_not_published_when_the_transaction_rolls_back(device_a, published, committing):
    from django.db import transaction

    with committing(), pytest.raises(RuntimeError), transaction.atomic():
        beat(device_a.device, timezone.now())
        raise RuntimeError("boom")
    assert published == []
    device_a.device.refresh_from_db()
    assert device_a.device.status == DeviceStatus.NEW
    with committing():
        beat(device_a.device, timezone.now())
    assert [event for _, event, _ in published] == ["device.status", "fleet.counts"]


def test_a_heartbeat_racing_the_sweep_keeps_the_device_online(device_a):
    start = timezone.now()
    beat(device_a.device, start)
    later = start + timedelta(seconds=61)
    # The heartbeat lands between the sweep's SELECT and its UPDATE: the conditional UPDATE
    # sees a late_at in the future and leaves the device alone.
    candidates = Device.objects.filter(status=DeviceStatus.ONLINE, late_at__lte=later)
    beat(device_a.device, later)
    assert services._transition_due(candidates, DeviceStatus.LATE, "late_at", later, 100) == 0
    device_a.device.refresh_from_db()
    assert device_a.device.status == DeviceStatus.ONLINE


def test_the_sweep_finds_due_devices_through_the_due_time_indexes(db):
    now = timezone.now()
    Device.objects.bulk_create(Device(name=f"off-{i}", status=DeviceStatus.OFFLINE) for i in range(3000))
    Device.objects.bulk_create(
        Device(name=f"on-{i}", status=DeviceStatus.ONLINE, late_at=now, offline_at=now) for i in range(5)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    late_plan = Device.objects.filter(status=DeviceStatus.ONLINE, late_at__lte=now).explain()
    offline_plan = Device.objects.filter(
        status__in=[DeviceStatus.ONLINE, DeviceStatus.LATE], offline_at__lte=now
    ).explain()
    assert "devices_due_late" in late_plan, late_plan
    assert "devices_due_offline" in offline_plan, offline_plan


def test_the_sweep_is_bounded_in_queries(db):
    start = timezone.now()
    for index in range(5):
        beat(make_device(f"d{index}").device, start)
    with CaptureQueriesContext(connection) as queries:
        services.sweep_device_status(start + timedelta(seconds=61))
    selects = [q for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 2, "one SELECT per transition kind; the counts event is computed after commit"


def test_the_sweep_task_runs_the_service(device_a):
    from devices.tasks import sweep_device_status

    beat(device_a.device, timezone.now() - timedelta(hours=1))
    result = sweep_device_status.delay()
    assert result.get() == {"late": 1, "offline": 1}
