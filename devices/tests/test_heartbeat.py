"""Heartbeats: validated field by field, idempotent, stored as a series plus a snapshot."""

import hashlib
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
    # auth lookup, replay check, insert, device update, the registry's rollout assignment lookup,
    # pending verdicts (+ savepoint/transaction statements)
    assert len([q for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]) <= 6


# --- runtime and bundle outcome -------------------------------------------------------------------

RUNTIME = {"memory_total_mb": 432.6, "python": "3.11.7", "numpy": "2.4.6", "litert": "2.3.0", "client": "0.1.0"}
OUTCOME = {"status": "rolled_back", "version": "digits@4", "sha256": "ab" * 32, "error": "loader failed", "at": 1.7e9}
# devices/api/serializers.py binds one RegexField instance (_VERSION) to python, numpy, litert and
# client: DRF binds it to the last name only, so all four read "client", and the field, a plain
# CharField, turns a number into a string. Fix: one field per name, refusing non-strings.


def stored_device(persona):
    persona.device.refresh_from_db()
    return persona.device


def test_it_stores_the_bundle_outcome_on_the_device(api, device_a):
    response = post(api, device_a, heartbeat_body(bundle=OUTCOME))
    assert response.status_code == 200, response.content
    assert stored_device(device_a).bundle_outcome == OUTCOME


def test_it_stores_the_runtime_on_the_device(api, device_a):
    response = post(api, device_a, heartbeat_body(runtime=RUNTIME))
    assert response.status_code == 200, response.content
    assert stored_device(device_a).runtime == RUNTIME


def test_a_bundle_outcome_may_be_partial_with_nulls(api, device_a):
    outcome = {"status": "refused", "version": None, "sha256": None}
    response = post(api, device_a, heartbeat_body(bundle=outcome))
    assert response.status_code == 200, response.content
    assert stored_device(device_a).bundle_outcome == outcome


def test_a_heartbeat_without_runtime_or_bundle_keeps_the_last_reported_ones(api, device_a):
    post(api, device_a, heartbeat_body(runtime=RUNTIME, bundle=OUTCOME))
    before = stored_device(device_a)
    runtime, outcome = before.runtime, before.bundle_outcome

    assert post(api, device_a, heartbeat_body()).status_code == 200

    after = stored_device(device_a)
    assert (after.runtime, after.bundle_outcome) == (runtime, outcome) and outcome == OUTCOME


@pytest.mark.parametrize(
    ("field", "inner", "value", "message"),
    [
        ("runtime", "numpy", 3, "string"),
        ("runtime", "python", "3.11.7 (main)", "version"),
        ("runtime", "litert", "x" * 41, "version"),
        ("runtime", "client", "0.1.0; drop", "version"),
        ("runtime", "memory_total_mb", "lots", "JSON number"),
        ("runtime", "memory_total_mb", -1, "greater than or equal to 0"),
        ("runtime", None, "fast", "dictionary"),
        ("bundle", "status", "exploded", "not a valid choice"),
        ("bundle", "status", None, "may not be null"),
        ("bundle", "sha256", "not-hex", "pattern"),
        ("bundle", "sha256", "AB" * 32, "pattern"),
        ("bundle", "error", "e" * 2001, "no more than 2000"),
        ("bundle", "error", "a\x00b", "null characters"),
        ("bundle", "version", 4, "string"),
        ("bundle", "version", "v" * 81, "no more than 80"),
        ("bundle", "at", "yesterday", "JSON number"),
        ("bundle", None, ["refused"], "dictionary"),
    ],
)
def test_it_rejects_a_malformed_runtime_or_bundle_naming_the_field(api, device_a, field, inner, value, message):
    good = {"runtime": RUNTIME, "bundle": OUTCOME}[field]
    bad = value if inner is None else {**good, inner: value}
    response = post(api, device_a, heartbeat_body(**{field: bad}))
    assert response.status_code == 400, response.content
    errors = response.json()[field]
    errors = errors["non_field_errors"] if inner is None else errors[inner]
    assert message.lower() in " ".join(errors).lower(), response.json()
    assert not Telemetry.objects.exists()
    device = stored_device(device_a)
    assert (device.runtime, device.bundle_outcome, device.last_seen_at) == ({}, {}, None)


def edge_client_heartbeat(tmp_path, *, loader=None) -> dict:
    """The body the edge client posts, built by its own code, after it applied a bundle."""
    from edge_client.bundles import BundleManager
    from edge_client.http import Response
    from edge_client.store import Store
    from edge_client.sync import SyncClient
    from edge_client.telemetry import Telemetry as EdgeTelemetry

    data = b'{"labels": ["0", "1"]}'

    class BundleHost:  # the edge client's outbound HTTP, replaced
        def download(self, url, sink, **kwargs):
            sink.write(data)
            return Response(200)

    bundles = BundleManager(tmp_path / "bundles", loader=loader, server_url="http://sphere.invalid", http=BundleHost())
    model = {"version": "digits@4", "sha256": hashlib.sha256(data).hexdigest(), "url": "/b/model.json", "size": None}
    bundles.apply(model)
    with Store(tmp_path / "outbox.sqlite3") as store:
        client = SyncClient(
            "http://sphere.invalid",
            tmp_path / "token",
            store,
            telemetry=EdgeTelemetry(disk_path=tmp_path),
            bundles=bundles,
        )
        return {"id": str(uuid.uuid4()), **client._heartbeat_body()}


def broken_loader(path):
    raise RuntimeError("reference set has the wrong shape " + "!" * 3000)


@pytest.mark.parametrize(("loader", "status"), [(None, "installed"), (broken_loader, "rolled_back")])
def test_the_edge_clients_heartbeat_is_accepted_whole_and_stored(api, device_a, tmp_path, loader, status):
    body = edge_client_heartbeat(tmp_path, loader=loader)
    assert body["bundle"]["status"] == status and {"runtime", "bundle"} <= set(body)

    response = post(api, device_a, body)

    assert response.status_code == 200, response.content
    assert "ignored_fields" not in response.json(), response.json()
    device = stored_device(device_a)
    assert device.bundle_outcome == body["bundle"]
    assert Telemetry.objects.get().client_id == uuid.UUID(body["id"])


def test_the_runtime_the_edge_client_reports_is_stored_as_sent(api, device_a, tmp_path):
    body = edge_client_heartbeat(tmp_path)
    assert post(api, device_a, body).status_code == 200
    assert stored_device(device_a).runtime == body["runtime"]
