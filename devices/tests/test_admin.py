"""Admin: fast on huge tables, actions go through services, secrets shown once."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conftest import heartbeat_body, make_device
from devices import services
from devices.models import DeviceCredential, DeviceGroup, EnrollmentToken, Telemetry

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_for(client, operator):
    client.force_login(operator)
    return client


def add_telemetry(device, n):
    now = timezone.now()
    for index in range(n):
        services.record_heartbeat(device, heartbeat_body(), now=now - timedelta(seconds=index))


def test_the_telemetry_changelist_never_counts_the_whole_table(admin_client_for, device_a):
    add_telemetry(device_a.device, 3)
    url = reverse("admin:devices_telemetry_changelist")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_for.get(url)
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_the_telemetry_changelist_costs_the_same_for_3_or_60_rows(admin_client_for, device_a, device_b):
    url = reverse("admin:devices_telemetry_changelist")
    add_telemetry(device_a.device, 3)
    with CaptureQueriesContext(connection) as small:
        admin_client_for.get(url)
    add_telemetry(device_b.device, 57)
    with CaptureQueriesContext(connection) as large:
        admin_client_for.get(url)
    assert len(small) == len(large)


def test_the_device_changelist_costs_the_same_for_2_or_30_devices(admin_client_for, db):
    group = DeviceGroup.objects.create(name="g")
    url = reverse("admin:devices_device_changelist")
    for index in range(2):
        make_device(f"a{index}", group)
    with CaptureQueriesContext(connection) as small:
        assert admin_client_for.get(url).status_code == 200
    for index in range(28):
        make_device(f"b{index}", group)
    with CaptureQueriesContext(connection) as large:
        admin_client_for.get(url)
    assert len(small) == len(large)


def test_telemetry_cannot_be_edited_in_the_admin(admin_client_for, device_a):
    add_telemetry(device_a.device, 1)
    row = Telemetry.objects.get()
    response = admin_client_for.post(reverse("admin:devices_telemetry_change", args=[row.pk]), {"cpu_percent": 1})
    assert response.status_code == 403
    assert admin_client_for.get(reverse("admin:devices_telemetry_add")).status_code == 403


def test_the_rotate_action_shows_new_tokens_once_and_they_work(admin_client_for, api, device_a):
    url = reverse("admin:devices_device_changelist")
    response = admin_client_for.post(url, {"action": "rotate_token", "_selected_action": [device_a.device.pk]})
    assert response.status_code == 200
    new_token = response.context["issued"][0][1]
    assert new_token.encode() in response.content
    assert DeviceCredential.objects.filter(device=device_a.device, revoked_at__isnull=True).count() == 1
    ok = api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {new_token}")
    assert ok.status_code == 200


def test_the_revoke_action_locks_the_device_out(admin_client_for, api, device_a):
    url = reverse("admin:devices_device_changelist")
    admin_client_for.post(url, {"action": "revoke_tokens", "_selected_action": [device_a.device.pk]})
    response = api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", **device_a.auth)
    assert response.status_code == 401


def test_the_move_action_asks_for_a_group_then_moves(admin_client_for, device_a, device_b):
    group = DeviceGroup.objects.create(name="south")
    url = reverse("admin:devices_device_changelist")
    selected = [device_a.device.pk, device_b.device.pk]
    form = admin_client_for.post(url, {"action": "move_to_group", "_selected_action": selected})
    assert form.status_code == 200 and b"Move devices to a group" in form.content
    done = admin_client_for.post(
        url, {"action": "move_to_group", "_selected_action": selected, "apply": "1", "group": group.pk}
    )
    assert done.status_code == 302
    assert set(group.devices.values_list("name", flat=True)) == {"device-a", "device-b"}


def test_creating_an_enrollment_token_in_the_admin_shows_it_once(admin_client_for, api):
    expires = timezone.now() + timedelta(days=1)
    response = admin_client_for.post(
        reverse("admin:devices_enrollmenttoken_add"),
        {"name": "site rollout", "max_uses": 3, "expires_at_0": expires.date(), "expires_at_1": "12:00:00"},
    )
    assert response.status_code == 200, response.content[:2000]
    token = response.context["token"]
    enrollment = EnrollmentToken.objects.get()
    assert enrollment.prefix in token and enrollment.created_by.username == "olivia"
    detail = admin_client_for.get(reverse("admin:devices_enrollmenttoken_change", args=[enrollment.pk]))
    assert token.encode() not in detail.content
    enrolled = api.post(
        "/api/v1/enroll",
        {"enrollment_token": token, "request_id": "5b7e8a52-55c6-4f57-a8a4-2d5c0c5f8f11", "name": "cam"},
        format="json",
    )
    assert enrolled.status_code == 201, enrolled.content


def test_an_outsider_cannot_open_the_admin(client, outsider):
    client.force_login(outsider)
    response = client.get(reverse("admin:devices_device_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
