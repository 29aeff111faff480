"""Device tokens: hashed at rest, scoped to their device, revocable and rotatable."""

import pytest

from conftest import heartbeat_body
from devices import services
from devices.models import DeviceCredential, Telemetry
from sphere.tokens import parse_token

HEARTBEAT = "/api/v1/device/heartbeat"
pytestmark = pytest.mark.django_db


def post_heartbeat(api, persona=None, body=None, **extra):
    headers = persona.auth if persona else {}
    return api.post(HEARTBEAT, body or heartbeat_body(), format="json", **headers, **extra)


def test_it_stores_only_a_hash_of_the_token(device_a):
    credential = DeviceCredential.objects.get(device=device_a.device)
    assert parse_token("sphd", device_a.token).secret not in credential.secret_hash
    assert len(credential.secret_hash) == 64
    assert device_a.token.startswith(f"sphd_{credential.prefix}_")


def test_a_device_heartbeat_is_recorded_on_its_own_device(api, device_a, device_b):
    response = post_heartbeat(api, device_a)
    assert response.status_code == 200, response.content
    assert response.json()["device_id"] == str(device_a.device.pk)
    assert Telemetry.objects.filter(device=device_a.device).count() == 1
    assert Telemetry.objects.filter(device=device_b.device).count() == 0


def test_device_b_cannot_write_as_device_a_even_when_naming_it(api, device_a, device_b):
    body = heartbeat_body(device_id=str(device_a.device.pk))
    response = post_heartbeat(api, device_b, body)
    assert response.status_code == 200, response.content
    assert response.json()["device_id"] == str(device_b.device.pk)
    assert response.json()["ignored_fields"] == ["device_id"]
    assert not Telemetry.objects.filter(device=device_a.device).exists()
    device_a.device.refresh_from_db()
    assert device_a.device.status == "new"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sphd_000000000000_not-a-real-secret",
        "Bearer garbage",
        "Bearer ",
        "Token sphd_abc",
    ],
)
def test_it_refuses_unknown_or_malformed_tokens_and_stores_nothing(api, device_a, header):
    response = api.post(HEARTBEAT, heartbeat_body(), format="json", HTTP_AUTHORIZATION=header)
    assert response.status_code in (401, 403), response.content
    assert not Telemetry.objects.exists()


def test_a_token_with_the_right_prefix_but_wrong_secret_is_refused(api, device_a):
    prefix = DeviceCredential.objects.get(device=device_a.device).prefix
    forged = f"sphd_{prefix}_{'x' * 43}"
    response = api.post(HEARTBEAT, heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert response.status_code == 401, response.content
    assert not Telemetry.objects.exists()


def test_anonymous_heartbeat_is_refused(api, device_a):
    response = post_heartbeat(api)
    assert response.status_code == 401, response.content
    assert not Telemetry.objects.exists()


def test_a_revoked_token_is_refused_and_says_so(api, device_a):
    services.revoke_credentials(device_a.device)
    response = post_heartbeat(api, device_a)
    assert response.status_code == 401, response.content
    assert "revoked" in response.json()["detail"]
    assert not Telemetry.objects.exists()


def test_rotation_retires_the_old_token_and_the_new_one_works(api, device_a):
    new_token = services.issue_credential(device_a.device)
    assert post_heartbeat(api, device_a).status_code == 401
    response = api.post(HEARTBEAT, heartbeat_body(), format="json", HTTP_AUTHORIZATION=f"Bearer {new_token}")
    assert response.status_code == 200, response.content


def test_a_device_token_cannot_reach_the_operator_api(api, device_a):
    for url in ["/api/v1/devices/", "/api/v1/telemetry/", "/api/v1/groups/", "/api/v1/enrollment-tokens/"]:
        response = api.get(url, **device_a.auth)
        assert response.status_code == 403, (url, response.content)


def test_an_operator_session_cannot_post_heartbeats(operator_api):
    response = operator_api.post(HEARTBEAT, heartbeat_body(), format="json")
    assert response.status_code == 401, response.content
    assert not Telemetry.objects.exists()


def test_desired_state_is_the_callers_own(api, device_a, device_b):
    response = api.get("/api/v1/device/desired-state", **device_b.auth)
    assert response.status_code == 200, response.content
    assert response.json()["device_id"] == str(device_b.device.pk)
