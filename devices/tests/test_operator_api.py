"""Operator API: staff sessions with model permissions; lists paginate by cursor and never count."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conftest import heartbeat_body, make_device
from devices import services
from devices.models import DeviceGroup, DeviceTag, EnrollmentToken
from sphere.tokens import parse_token

pytestmark = pytest.mark.django_db


def test_anonymous_callers_and_outsiders_are_refused(api, outsider_api, device_a):
    for client, expected in [(api, 401), (outsider_api, 403)]:
        for url in ["/api/v1/devices/", f"/api/v1/devices/{device_a.device.pk}/", "/api/v1/telemetry/"]:
            response = client.get(url)
            assert response.status_code == expected, (url, response.content)


def test_staff_without_the_view_permission_is_refused(api, django_user_model, device_a):
    staff = django_user_model.objects.create_user("sam", password="pw-sam-123", is_staff=True)
    api.force_login(staff)
    assert api.get("/api/v1/devices/").status_code == 403


def test_an_operator_lists_devices_with_filters(operator_api, db):
    lab = DeviceGroup.objects.create(name="lab")
    one, two = make_device("cam-1", lab).device, make_device("cam-2").device
    services.set_tags(one, ["north"])
    services.record_heartbeat(two, heartbeat_body())
    by_group = operator_api.get("/api/v1/devices/", {"group": "lab"}).json()["results"]
    assert [d["name"] for d in by_group] == ["cam-1"]
    by_status = operator_api.get("/api/v1/devices/", {"status": "online"}).json()["results"]
    assert [d["name"] for d in by_status] == ["cam-2"]
    by_tag = operator_api.get("/api/v1/devices/", {"tag": "north"}).json()["results"]
    assert [d["tags"] for d in by_tag] == [["north"]]
    bad = operator_api.get("/api/v1/devices/", {"status": "exploded"})
    assert bad.status_code == 400 and "status" in bad.json()


def test_the_device_list_costs_the_same_queries_for_5_or_50_devices(operator_api, db):
    tag = DeviceTag.objects.create(name="t")
    group = DeviceGroup.objects.create(name="g")

    def list_queries(n_devices):
        for index in range(n_devices):
            make_device(f"n{n_devices}-{index}", group).device.tags.add(tag)
        with CaptureQueriesContext(connection) as queries:
            assert operator_api.get("/api/v1/devices/").status_code == 200
        return len(queries)

    assert list_queries(5) == list_queries(45)


def test_telemetry_lists_by_device_and_time_window_without_counting(operator_api, device_a, device_b):
    now = timezone.now()
    for hours in (5, 3, 1):
        services.record_heartbeat(device_a.device, heartbeat_body(), now=now - timedelta(hours=hours))
    services.record_heartbeat(device_b.device, heartbeat_body(), now=now)
    with CaptureQueriesContext(connection) as queries:
        response = operator_api.get(
            "/api/v1/telemetry/",
            {"device": str(device_a.device.pk), "since": (now - timedelta(hours=4)).isoformat()},
        )
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["results"]) == 2
    assert body["results"][0]["received_at"] > body["results"][1]["received_at"]
    assert "count" not in body
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)


def test_telemetry_pages_follow_the_cursor(operator_api, device_a):
    now = timezone.now()
    for minutes in range(5):
        services.record_heartbeat(device_a.device, heartbeat_body(), now=now - timedelta(minutes=minutes))
    first = operator_api.get("/api/v1/telemetry/", {"page_size": 2}).json()
    second = operator_api.get(first["next"]).json()
    ids = [row["id"] for row in first["results"] + second["results"]]
    assert len(ids) == len(set(ids)) == 4


def test_an_operator_can_edit_a_device_but_not_its_status(operator_api, device_a):
    group = DeviceGroup.objects.create(name="north")
    url = f"/api/v1/devices/{device_a.device.pk}/"
    response = operator_api.patch(url, {"location": "Dock 4", "group": "north", "status": "online"}, format="json")
    assert response.status_code == 200, response.content
    device_a.device.refresh_from_db()
    assert (device_a.device.location, device_a.device.group, device_a.device.status) == ("Dock 4", group, "new")


def test_devices_are_not_created_through_the_api(operator_api):
    response = operator_api.post("/api/v1/devices/", {"name": "x"}, format="json")
    assert response.status_code == 405
    assert "enroll" in response.json()["detail"]


def test_rotating_a_token_shows_it_once_and_retires_the_old_one(operator_api, api, device_a):
    response = operator_api.post(f"/api/v1/devices/{device_a.device.pk}/rotate-token/")
    assert response.status_code == 200, response.content
    new_token = response.json()["token"]
    heartbeat = api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", **device_a.auth)
    assert heartbeat.status_code == 401
    heartbeat = api.post(
        "/api/v1/device/heartbeat", heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {new_token}"
    )
    assert heartbeat.status_code == 200
    detail = operator_api.get(f"/api/v1/devices/{device_a.device.pk}/").json()
    assert new_token not in str(detail)


def test_revoking_needs_the_change_permission(api, django_user_model, device_a):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("vic", password="pw-vic-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_device"))
    api.force_login(viewer)
    response = api.post(f"/api/v1/devices/{device_a.device.pk}/revoke/")
    assert response.status_code == 403
    assert device_a.device.credentials.filter(revoked_at__isnull=True).exists()


def test_an_operator_creates_an_enrollment_token_that_is_shown_once(operator_api):
    expires = (timezone.now() + timedelta(days=2)).isoformat()
    response = operator_api.post(
        "/api/v1/enrollment-tokens/", {"name": "rollout-7", "max_uses": 10, "expires_at": expires}, format="json"
    )
    assert response.status_code == 201, response.content
    token = response.json()["token"]
    assert token.startswith("sphe_")
    enrollment = EnrollmentToken.objects.get()
    assert enrollment.max_uses == 10
    listed = operator_api.get("/api/v1/enrollment-tokens/").json()["results"][0]
    assert listed["prefix"] == enrollment.prefix
    assert parse_token("sphe", token).secret not in str(listed)


def test_the_openapi_schema_documents_the_device_and_operator_endpoints(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ["/api/v1/enroll", "/api/v1/device/heartbeat", "/api/v1/devices/", "/api/v1/telemetry/"]:
        assert path in paths, sorted(paths)
    assert paths["/api/v1/device/heartbeat"]["post"]["security"] == [{"deviceToken": []}]
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
