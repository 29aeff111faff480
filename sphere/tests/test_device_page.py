"""One device's page: identity, telemetry charts over a window (downsampled in the database),
its drift events, its model history, kept live over the fleet and drift topics."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from conftest import heartbeat_body
from devices.models import Device, DeviceGroup, Telemetry
from drift.models import DriftEvent
from registry.models import AssignmentState, ModelVersion, Rollout, RolloutAssignment
from registry.tests.factories import digits_family
from sphere.dashboard.queries import MAX_POINTS

pytestmark = pytest.mark.django_db


def grant(user, *codenames):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def cam(db):
    group = DeviceGroup.objects.create(name="line-2", heartbeat_period_s=60)
    device = Device.objects.create(
        name="edge-cam-7",
        group=group,
        hardware="Raspberry Pi Zero 2 W",
        platform="linux-aarch64 / Python 3.11",
        location="Hall B, line 2",
        client_version="0.4.1",
        model_version="digits@3",
        status="online",
        last_seen_at=timezone.now(),
        runtime={"memory_total_mb": 512, "litert": "2.3.0"},
        bundle_outcome={"version": "digits@3", "outcome": "applied"},
        last_telemetry={"cpu_percent": 37.5, "temperature_c": 61.2},
    )
    from devices.services import set_tags

    set_tags(device, ["camera", "line-2"])
    return device


def telemetry(device, ages: list[timedelta], **fields):
    now = timezone.now()
    Telemetry.objects.bulk_create(
        [
            Telemetry(
                device=device,
                client_id=uuid.uuid4(),
                received_at=now - age,
                cpu_percent=fields.get("cpu_percent", 20 + i % 50),
                memory_percent=40.0,
                temperature_c=55.0,
                latency_p50_ms=8.0,
                latency_p95_ms=15.0,
                model_version=fields.get("model_version", "digits@3"),
            )
            for i, age in enumerate(ages)
        ],
        batch_size=2000,
    )


def points(page: str, chart: str, series: str) -> int:
    figure = re.search(rf'<figure class="chart" data-chart="{chart}">(.*?)</figure>', page, re.S).group(1)
    found = re.search(rf'data-series="{series}" data-points="(\d+)"', figure)
    assert found, figure[:500]
    return int(found.group(1))


def drawn_vertices(page: str, chart: str) -> int:
    """Points actually drawn in a chart: path vertices plus lone dots."""
    figure = re.search(rf'<figure class="chart" data-chart="{chart}">(.*?)</figure>', page, re.S).group(1)
    paths = re.findall(r'<path d="([^"]*)"', figure)
    return sum(len(re.findall(r"[ML]", d)) for d in paths) + figure.count("<circle")


def url(device, **params) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"/fleet/devices/{device.pk}/" + (f"?{query}" if query else "")


# --- Access -------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client, cam):
    response = client.get(url(cam))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_an_outsider_gets_403(client, outsider, cam):
    client.force_login(outsider)
    assert client.get(url(cam)).status_code == 403


def test_staff_without_the_device_permission_gets_403(client, django_user_model, cam):
    staff = django_user_model.objects.create_user("sid", password="pw-sid-123", is_staff=True)
    client.force_login(staff)
    assert client.get(url(cam)).status_code == 403


def test_an_unknown_device_is_404(client, operator):
    client.force_login(operator)
    assert client.get(f"/fleet/devices/{uuid.uuid4()}/").status_code == 404


# --- Identity -----------------------------------------------------------------------------------


def test_it_shows_the_devices_identity_with_links_to_the_admin(client, operator, cam):
    client.force_login(operator)
    page = client.get(url(cam)).content.decode()
    for text in (
        "edge-cam-7",
        "Raspberry Pi Zero 2 W",
        "linux-aarch64 / Python 3.11",
        "Hall B, line 2",
        "0.4.1",
        "digits@3",
        "memory_total_mb</span> 512",
        "outcome</span> applied",
        '<span class="badge tag">camera</span>',
        '<span class="badge big status-online" data-field="status">online</span>',
    ):
        assert text in page, text
    assert f'href="/admin/devices/device/{cam.pk}/change/"' in page
    assert f'href="/admin/devices/devicegroup/{cam.group_id}/change/"' in page
    # The latest numbers come from the last heartbeat, ready for device.js to replace.
    assert '<span data-latest="cpu_percent">37.5</span>' in page


def test_the_page_subscribes_to_the_fleet_topic_and_to_drift_only_when_permitted(client, operator, cam):
    client.force_login(operator)
    assert 'data-live-topics="fleet"' in client.get(url(cam)).content.decode()
    client.force_login(grant(operator, "view_driftevent"))
    page = client.get(url(cam)).content.decode()
    assert 'data-live-topics="fleet drift"' in page and "sphere/device.js" in page


# --- Telemetry charts ---------------------------------------------------------------------------


def test_the_charts_have_a_point_for_each_heartbeat_of_the_window(client, operator, cam):
    telemetry(cam, [timedelta(minutes=m) for m in (5, 15, 25, 35, 45)])
    client.force_login(operator)
    page = client.get(url(cam, window="1h")).content.decode()
    for chart, series in [("cpu", "CPU"), ("memory", "memory"), ("temperature", "temperature"), ("latency", "p95")]:
        assert points(page, chart, series) == 5
    assert points(page, "latency", "p50") == 5
    # Ten minutes apart on a 60 s heartbeat is an outage each time: five lone dots, no line.
    assert drawn_vertices(page, "cpu") == 5
    assert "5 heartbeats" in page


def test_a_window_leaves_out_older_heartbeats(client, operator, cam):
    telemetry(cam, [timedelta(minutes=m) for m in (5, 15, 25, 35, 45)])
    telemetry(cam, [timedelta(hours=3), timedelta(hours=30)], cpu_percent=99.0)
    client.force_login(operator)
    assert points(client.get(url(cam, window="1h")).content.decode(), "cpu", "CPU") == 5
    day = client.get(url(cam, window="24h")).content.decode()
    assert points(day, "cpu", "CPU") == 6 and "6 heartbeats" in day
    assert points(client.get(url(cam)).content.decode(), "cpu", "CPU") == 6  # the default is 24 h
    # A week's buckets are 33.6 min wide: the five recent heartbeats share two of them.
    week = client.get(url(cam, window="7d")).content.decode()
    assert "7 heartbeats" in week and points(week, "cpu", "CPU") < 7


def test_an_unknown_window_falls_back_to_24_hours(client, operator, cam):
    client.force_login(operator)
    response = client.get(url(cam, window="forever"))
    assert response.context["window"] == "24h"
    assert "no telemetry in this window" in response.content.decode()


def test_months_of_telemetry_are_downsampled_to_a_bounded_number_of_points_in_bounded_queries(
    client, operator, cam, django_assert_max_num_queries
):
    # 10,000 heartbeats a minute apart: nearly seven days.
    telemetry(cam, [timedelta(minutes=m, seconds=30) for m in range(10_000)])
    client.force_login(grant(operator, "view_driftevent", "view_rolloutassignment"))
    client.get(url(cam))  # warm the session and permission caches of the test client
    with django_assert_max_num_queries(14):
        page = client.get(url(cam, window="7d")).content.decode()
    cpu = points(page, "cpu", "CPU")
    assert 250 <= cpu <= MAX_POINTS
    assert drawn_vertices(page, "cpu") == cpu
    assert "10000 heartbeats" in page
    # An hour of the same device: one point per heartbeat (fewer than the cap).
    assert points(client.get(url(cam, window="1h")).content.decode(), "cpu", "CPU") == 60


def test_the_chart_plots_bucket_averages(cam):
    from sphere.dashboard.queries import telemetry_series

    now = timezone.now()
    Telemetry.objects.bulk_create(
        Telemetry(device=cam, client_id=uuid.uuid4(), received_at=now - timedelta(seconds=s), cpu_percent=cpu)
        for s, cpu in [(100, 10.0), (101, 30.0), (3000, 50.0)]
    )
    series = telemetry_series(cam, timedelta(hours=1), now)  # 12 s buckets
    assert [value for _, value in series.points["cpu_percent"]] == [50.0, 20.0]
    assert series.points["temperature_c"] == []
    assert series.heartbeats == 3


# --- Drift events -------------------------------------------------------------------------------


def drift_events(device, n: int, detector: str = "knn_distance"):
    now = timezone.now()
    DriftEvent.objects.bulk_create(
        DriftEvent(device=device, client_id=uuid.uuid4(), created=now - timedelta(minutes=i), detector=detector)
        for i in range(n)
    )


def test_its_drift_events_are_listed_newest_first_paginated_and_linked(client, operator, cam):
    other = Device.objects.create(name="other")
    drift_events(cam, 25)
    drift_events(other, 3, detector="page_hinkley")
    client.force_login(grant(operator, "view_driftevent"))
    first = client.get(url(cam)).content.decode()
    rows = re.findall(r'<tr data-event="(\d+)">', first)
    assert len(rows) == 20 and "page_hinkley" not in first
    newest = DriftEvent.objects.filter(device=cam).order_by("-created").first()
    assert rows[0] == str(newest.pk) and f'href="/drift/events/{newest.pk}/"' in first
    assert "page 1 of 2" in first and 'href="?window=24h&amp;page=2"' in first
    second = client.get(url(cam, window="24h", page=2)).content.decode()
    assert len(re.findall(r'<tr data-event="\d+">', second)) == 5
    assert f"/admin/drift/driftevent/?device={cam.pk}" in first


def test_drift_events_are_left_out_for_those_who_may_not_see_them(client, operator, cam):
    drift_events(cam, 2)
    client.force_login(operator)
    response = client.get(url(cam))
    assert response.context["events"] is None and "data-event=" not in response.content.decode()


# --- Model history ------------------------------------------------------------------------------


def rollout_assignment(device, number: int, state=AssignmentState.ACTIVE):
    family = digits_family()
    version = ModelVersion.objects.create(
        family=family, number=number, bundle_key=f"b{number}", bundle_size=1, feature_dim=4
    )
    rollout = Rollout.objects.create(family=family, version=version, name=f"canary {number}", status="completed")
    return RolloutAssignment.objects.create(
        rollout=rollout, device=device, version=version, phase=0, state=state, active_at=timezone.now()
    )


def test_the_model_history_shows_each_reported_version_change_and_the_rollouts(client, operator, cam):
    telemetry(cam, [timedelta(hours=h) for h in (50, 40, 30)], model_version="digits@2")
    telemetry(cam, [timedelta(hours=h) for h in (20, 10, 1)], model_version="digits@3")
    assignment = rollout_assignment(cam, 3)
    client.force_login(grant(operator, "view_rolloutassignment"))
    page = client.get(url(cam)).content.decode()
    history = page[page.index('id="history-title"') :]
    reported = re.findall(r'<tr class="history-reported">\s*<td>[^<]*</td>\s*<td>([^<]+)</td>', history)
    assert reported == ["digits@3", "digits@2"]
    assert "serving" in history and "until " in history
    assert f'href="/registry/rollouts/{assignment.rollout_id}/">canary 3</a>' in history
    assert f'href="/registry/versions/{assignment.version_id}/">digits@3</a>' in history
    assert "badge assignment-active" in history


def test_rollout_assignments_are_left_out_without_the_registry_permission(client, operator, cam):
    rollout_assignment(cam, 4)
    client.force_login(operator)
    page = client.get(url(cam)).content.decode()
    assert "history-rollout" not in page


def test_a_version_seen_only_before_the_scanned_heartbeats_is_marked_as_started_at_the_latest(cam, monkeypatch):
    from sphere.dashboard import queries

    telemetry(cam, [timedelta(hours=h) for h in (5, 4, 3)], model_version="digits@2")
    telemetry(cam, [timedelta(hours=h) for h in (2, 1)], model_version="digits@3")
    monkeypatch.setattr(queries, "HISTORY_SCAN", 3)
    changes = queries.reported_versions(cam)
    assert [(change.version, change.at_least) for change in changes] == [("digits@3", False), ("digits@2", True)]


# --- Live ---------------------------------------------------------------------------------------


def test_a_heartbeat_that_changes_no_status_is_published_for_the_pages_that_show_last_seen(
    cam, django_capture_on_commit_callbacks
):
    from devices import services

    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        services.record_heartbeat(cam, heartbeat_body(cpu_percent=42.0))
    [(topic, event, data)] = [call.args for call in send.call_args_list]
    assert (topic, event) == ("fleet", "device.heartbeat")
    assert data["id"] == str(cam.pk) and data["status"] == "online" and data["last_seen_at"]
    assert data["telemetry"]["cpu_percent"] == 42.0
