"""Enrollment: a shared, limited, expiring token turns into a device with its own credential."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from conftest import heartbeat_body
from devices import services
from devices.models import Device, DeviceGroup, EnrollmentToken
from sphere.tokens import parse_token

ENROLL = "/api/v1/enroll"
pytestmark = pytest.mark.django_db


def new_enrollment(**kwargs):
    kwargs.setdefault("name", "batch 1")
    kwargs.setdefault("expires_at", timezone.now() + timedelta(days=1))
    return services.create_enrollment_token(**kwargs)


def enroll(api, token, request_id=None, **profile):
    body = {"enrollment_token": token, "request_id": str(request_id or uuid.uuid4()), "name": "pi-7", **profile}
    return api.post(ENROLL, body, format="json")


def test_a_device_enrolls_into_the_tokens_group_and_gets_a_working_credential(api):
    group = DeviceGroup.objects.create(name="site-a", heartbeat_period_s=20)
    _, token = new_enrollment(group=group)
    response = enroll(api, token, hardware="Raspberry Pi Zero 2 W", tags=["cam", "north"])
    assert response.status_code == 201, response.content
    body = response.json()
    device = Device.objects.get(pk=body["device_id"])
    assert device.group == group
    assert body["heartbeat_period_s"] == 20
    assert sorted(device.tags.values_list("name", flat=True)) == ["cam", "north"]
    heartbeat = api.post(
        "/api/v1/device/heartbeat", heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {body['token']}"
    )
    assert heartbeat.status_code == 200, heartbeat.content


def test_the_enrollment_token_is_stored_only_as_a_hash():
    enrollment, token = new_enrollment()
    assert parse_token("sphe", token).secret not in enrollment.secret_hash
    assert EnrollmentToken.objects.filter(secret_hash__contains=parse_token("sphe", token).secret).count() == 0


def test_it_stops_at_max_uses(api):
    _, token = new_enrollment(max_uses=2)
    assert enroll(api, token).status_code == 201
    assert enroll(api, token).status_code == 201
    third = enroll(api, token)
    assert third.status_code == 403
    assert "no uses left" in third.json()["detail"]
    assert Device.objects.count() == 2


def test_an_expired_token_is_refused(api):
    _, token = new_enrollment(expires_at=timezone.now() - timedelta(seconds=1))
    response = enroll(api, token)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]
    assert not Device.objects.exists()


def test_a_revoked_token_is_refused(api):
    enrollment, token = new_enrollment()
    services.revoke_enrollment_token(enrollment)
    response = enroll(api, token)
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


@pytest.mark.parametrize("token", ["sphe_000000000000_nope", "nonsense", "sphd_000000000000_device-token"])
def test_unknown_or_malformed_tokens_are_refused(api, token):
    response = enroll(api, token)
    assert response.status_code == 401, response.content
    assert not Device.objects.exists()


def test_a_replayed_enrollment_returns_the_same_device_without_using_another_slot(api):
    enrollment, token = new_enrollment(max_uses=1)
    request_id = uuid.uuid4()
    first = enroll(api, token, request_id)
    second = enroll(api, token, request_id)
    assert second.status_code == 201, second.content
    assert second.json()["device_id"] == first.json()["device_id"]
    assert Device.objects.count() == 1
    enrollment.refresh_from_db()
    assert enrollment.use_count == 1
    # Only the newest token works: the lost first answer's token is retired.
    for body, expected in [(first.json(), 401), (second.json(), 200)]:
        response = api.post(
            "/api/v1/device/heartbeat", heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {body['token']}"
        )
        assert response.status_code == expected


def test_a_replay_after_the_device_used_its_token_is_a_conflict(api):
    _, token = new_enrollment(max_uses=3)
    request_id = uuid.uuid4()
    first = enroll(api, token, request_id).json()
    api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {first['token']}")
    replay = enroll(api, token, request_id)
    assert replay.status_code == 409
    assert Device.objects.count() == 1


def test_a_request_id_cannot_be_replayed_with_another_enrollment_token(api):
    _, token_one = new_enrollment()
    _, token_two = new_enrollment()
    request_id = uuid.uuid4()
    assert enroll(api, token_one, request_id).status_code == 201
    assert enroll(api, token_two, request_id).status_code == 409


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", ""), ("name", 5), ("request_id", "abc"), ("tags", ["no spaces allowed"]), ("tags", "cam")],
)
def test_bad_enrollment_bodies_get_field_errors_and_use_nothing(api, field, value):
    enrollment, token = new_enrollment()
    body = {"enrollment_token": token, "request_id": str(uuid.uuid4()), "name": "pi", field: value}
    response = api.post(ENROLL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    enrollment.refresh_from_db()
    assert enrollment.use_count == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_devices_racing_for_the_last_use_get_one_device():
    """Real concurrent transactions need PostgreSQL (SQLite's test database is in memory)."""
    _, token = new_enrollment(max_uses=1)
    results = []

    def attempt():
        try:
            enrolled = services.enroll_device(enrollment_token=token, request_id=uuid.uuid4(), profile={"name": "x"})
            results.append(enrolled)
        except Exception as exc:  # noqa: BLE001 - every outcome is asserted below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert sum(isinstance(r, services.Enrollment) for r in results) == 1
    assert all(isinstance(r, (services.Enrollment, services.EnrollmentError)) for r in results), results
    assert Device.objects.count() == 1


def test_enrollment_attempts_are_rate_limited_per_address(api):
    from rest_framework.settings import api_settings
    from rest_framework.throttling import ScopedRateThrottle

    rates = {**api_settings.DEFAULT_THROTTLE_RATES, "enroll": "3/min"}
    ScopedRateThrottle.THROTTLE_RATES = rates
    try:
        codes = [enroll(api, "sphe_000000000000_guess").status_code for _ in range(4)]
    finally:
        ScopedRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    assert codes == [401, 401, 401, 429]
