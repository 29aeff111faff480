"""Heartbeats: validated field by field, idempotent, stored as a series plus a snapshot."""

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import heartbeat_body
from devices.models import DeviceGroup, DeviceStatus, Telemetry

HEARTBEAT = "/api/v1/device/heartbeat"
pytestmark = pytest.mark.django_db


def post(api, persona, body, **extra):
    return api.post(HEARTBEAT, body, format="json", **persona.auth, **extra)


def post_raw(api, persona, raw: bytes):
    return api.generic("POST", HEARTBEAT, raw, content_type="application/json", **persona.auth)


def test_it_stores_the_series_and_the_latest_snapshot(api, device_a):
    body = heartbeat_body(cpu_percent=77.5, temperature_c=61.0, model_version="digits@3")
    response = post(api, device_a, body)
    assert response.status_code == 200, response.content
    row = Telemetry.objects.get()
    assert (row.cpu_percent, row.temperature_c, row.model_version) == (77.5, 61.0, "digits@3")
    device = device_a.device
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert device.last_telemetry["cpu_percent"] == 77.5
    assert device.model_version == "digits@3"
    assert device.late_at > device.last_seen_at


def test_the_answer_is_the_desired_state_with_the_group_config(api, device_a):
    group = DeviceGroup.objects.create(name="lab", heartbeat_period_s=30, config={"confidence_band": [0.4, 0.7]})
    device_a.device.group = group
    device_a.device.save()
    state = post(api, device_a, heartbeat_body()).json()
    assert state["heartbeat_period_s"] == 30
    assert state["config"] == {"confidence_band": [0.4, 0.7]}
    assert state["model"] is None
    assert state["verdicts"] == []


def test_a_replayed_heartbeat_changes_nothing_and_answers_the_same(api, device_a):
    body = heartbeat_body()
    first = post(api, device_a, body)
    device_a.device.refresh_from_db()
    seen = device_a.device.last_seen_at
    second = post(api, device_a, {**body, "cpu_percent": 99.0})
    assert first.json() == second.json()
    assert Telemetry.objects.count() == 1
    assert Telemetry.objects.get().cpu_percent == body["cpu_percent"]
    device_a.device.refresh_from_db()
    assert device_a.device.last_seen_at == seen


def test_the_same_client_id_from_two_devices_is_two_records(api, device_a, device_b):
    body = heartbeat_body()
    post(api, device_a, body)
    post(api, device_b, body)
    assert Telemetry.objects.count() == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu_percent", "12", "JSON number"),
        ("cpu_percent", True, "JSON number"),
        ("cpu_percent", [1], "JSON number"),
        ("memory_percent", 140.0, "less than or equal to 100"),
        ("temperature_c", -500, "greater than or equal to -100"),
        ("net_rx_bytes", 1.5, "JSON integer"),
        ("uptime_s", -1, "greater than or equal to 0"),
        ("error_rate", 1.5, "less than or equal to 1"),
        ("id", "not-a-uuid", "UUID"),
        ("shutting_down", "yes", "true or false"),
        ("client_version", 12, "string"),
        ("sent_at", "yesterday", "Datetime"),
    ],
)
def test_it_rejects_wrong_types_and_ranges_with_field_level_errors(api, device_a, field, value, message):
    response = post(api, device_a, heartbeat_body(**{field: value}))
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert message.lower() in " ".join(errors[field]).lower(), errors
    assert not Telemetry.objects.exists()


def test_it_rejects_a_missing_id(api, device_a):
    body = heartbeat_body()
    del body["id"]
    response = post(api, device_a, body)
    assert response.status_code == 400
    assert response.json() == {"id": ["This field is required."]}
    assert not Telemetry.objects.exists()


def test_it_ignores_unknown_fields_and_names_them_in_the_answer(api, device_a):
    response = post(api, device_a, heartbeat_body(gpu_percent=3, npu_temp_c=40))
    assert response.status_code == 200, response.content
    assert response.json()["ignored_fields"] == ["gpu_percent", "npu_temp_c"]
    assert Telemetry.objects.count() == 1


def test_a_clean_heartbeat_has_no_ignored_fields(api, device_a):
    assert "ignored_fields" not in post(api, device_a, heartbeat_body()).json()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_it_rejects_nan_and_infinity(api, device_a, literal):
    raw = b'{"id": "%s", "cpu_percent": %s}' % (str(uuid.uuid4()).encode(), literal)
    response = post_raw(api, device_a, raw)
    assert response.status_code == 400, response.content
    assert "not JSON compliant" in response.json()["detail"]
    assert not Telemetry.objects.exists()


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"text"', b"null", b"\xff\xfe"])
def test_it_rejects_malformed_json_bodies(api, device_a, raw):
    response = post_raw(api, device_a, raw)
    assert response.status_code == 400, response.content
    assert response.json()
    assert not Telemetry.objects.exists()


def test_it_refuses_an_oversized_body_before_parsing(api, device_a):
    body = heartbeat_body(client_version="x" * 70_000)
    response = post(api, device_a, body)
    assert response.status_code == 413, response.content
    assert "limit" in response.json()["detail"]
    assert not Telemetry.objects.exists()


def test_it_refuses_a_body_over_the_global_api_limit(api, device_a, settings):
    settings.API_BODY_LIMITS = [("/api/", 2048)]
    raw = json.dumps(heartbeat_body(client_version="y" * 3000)).encode()
    response = post_raw(api, device_a, raw)
    assert response.status_code == 413
    assert not Telemetry.objects.exists()


def test_it_refuses_non_json_content(api, device_a):
    response = api.post(HEARTBEAT, {"id": str(uuid.uuid4())}, **device_a.auth)  # multipart form
    assert response.status_code == 415
    assert not Telemetry.objects.exists()


def test_get_is_not_allowed_on_heartbeat(api, device_a):
    assert api.get(HEARTBEAT, **device_a.auth).status_code == 405


def test_a_heartbeat_costs_a_bounded_number_of_queries(api, device_a):
    post(api, device_a, heartbeat_body())  # first one flips the status and publishes
    with CaptureQueriesContext(connection) as queries:
        assert post(api, device_a, heartbeat_body()).status_code == 200
    # auth lookup, replay check, insert, device update (+ savepoint/transaction statements)
    assert len([q for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]) <= 5
