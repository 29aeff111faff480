"""Prediction logs: a bulk endpoint, checked record by record, idempotent on the record id,
with the uncertain band routed to labeling through a hook."""

import base64
import json
import uuid

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import hooks
from devices.ingest import predictions
from devices.models import ConfidenceBand, PredictionLog

PREDICTIONS = "/api/v1/device/predictions"
pytestmark = pytest.mark.django_db


def record(**overrides) -> dict:
    body = {
        "id": str(uuid.uuid4()),
        "created": "2026-11-23T11:59:58.020Z",
        "model_version": "digits@3",
        "label": "7",
        "confidence": 0.93,
        "probabilities": {"7": 0.93, "1": 0.04, "9": 0.01},
        "latency_ms": 8.1,
        "features": base64.b64encode(np.arange(8, dtype="<f4").tobytes()).decode(),
        "image": None,
    }
    body.update(overrides)
    return body


def post(api, persona, records, **extra):
    raw = json.dumps({"predictions": records}).encode()
    return post_raw(api, persona, raw, **extra)


def post_raw(api, persona, raw: bytes, content_type="application/json", **extra):
    return api.generic("POST", PREDICTIONS, raw, content_type=content_type, **persona.auth, **extra)


def statuses(response) -> list[str]:
    return [result["status"] for result in response.json()["results"]]


def test_it_stores_a_batch_and_answers_one_result_per_record_in_order(api, device_a):
    batch = [record(label=str(n)) for n in range(5)]
    response = post(api, device_a, batch)
    assert response.status_code == 200, response.content
    assert [result["id"] for result in response.json()["results"]] == [r["id"] for r in batch]
    assert statuses(response) == ["created"] * 5
    row = PredictionLog.objects.get(client_id=batch[2]["id"])
    assert (row.device_id, row.label, row.confidence, row.model_version) == (device_a.device.pk, "2", 0.93, "digits@3")
    assert row.probabilities == {"7": 0.93, "1": 0.04, "9": 0.01}
    assert row.latency_ms == 8.1
    assert row.created.isoformat() == "2026-11-23T11:59:58.020000+00:00"


def test_features_are_stored_as_float32_bytes_and_read_back_exactly(api, device_a):
    vector = np.random.default_rng(1).normal(size=64).astype("<f4")
    post(api, device_a, [one := record(features=base64.b64encode(vector.tobytes()).decode())])
    row = PredictionLog.objects.get(client_id=one["id"])
    assert len(bytes(row.features)) == 64 * 4
    np.testing.assert_array_equal(row.feature_vector, vector)


def test_optional_fields_may_be_missing_or_null(api, device_a):
    bare = {
        key: value
        for key, value in record().items()
        if key in {"id", "created", "model_version", "label", "confidence"}
    }
    nulls = record(probabilities=None, latency_ms=None, features=None, image=None)
    response = post(api, device_a, [bare, nulls])
    assert statuses(response) == ["created", "created"]
    row = PredictionLog.objects.get(client_id=bare["id"])
    assert (row.probabilities, row.latency_ms, row.features, row.image) == (None, None, None, "")


IMAGE_STATS = {"brightness": 0.41, "contrast": 0.2, "laplacian_variance": 0.013, "red_mean": 0.5}


def test_image_statistics_are_stored_as_sent(api, device_a):
    post(api, device_a, [one := record(image_stats=IMAGE_STATS)])
    assert PredictionLog.objects.get(client_id=one["id"]).image_stats == IMAGE_STATS


@pytest.mark.postgres
def test_on_postgresql_the_fallback_insert_stores_image_statistics_too(api, device_a):
    stored = record()
    post(api, device_a, [stored])
    response = post(api, device_a, [stored, fresh := record(image_stats=IMAGE_STATS)])
    assert statuses(response) == ["duplicate", "created"]
    assert PredictionLog.objects.get(client_id=fresh["id"]).image_stats == IMAGE_STATS


def test_a_replayed_batch_changes_nothing_and_answers_each_record_as_delivered(api, device_a):
    batch = [record() for _ in range(3)]
    first = post(api, device_a, batch)
    stored = list(PredictionLog.objects.order_by("id").values_list("id", "client_id", "received_at"))
    replay = post(api, device_a, batch)
    assert replay.status_code == first.status_code == 200
    assert statuses(first) == ["created"] * 3 and statuses(replay) == ["duplicate"] * 3
    assert [r["id"] for r in replay.json()["results"]] == [r["id"] for r in first.json()["results"]]
    assert list(PredictionLog.objects.order_by("id").values_list("id", "client_id", "received_at")) == stored


def test_a_batch_mixing_new_and_stored_records_stores_only_the_new_ones(api, device_a):
    old, new = record(), record()
    post(api, device_a, [old])
    response = post(api, device_a, [old, new])
    assert statuses(response) == ["duplicate", "created"]
    assert PredictionLog.objects.count() == 2


def test_the_same_id_twice_in_one_batch_is_stored_once(api, device_a):
    twice = record()
    response = post(api, device_a, [twice, dict(twice)])
    assert statuses(response) == ["created", "duplicate"]
    assert PredictionLog.objects.count() == 1


def test_record_ids_belong_to_their_device(api, device_a, device_b):
    shared = record()
    assert statuses(post(api, device_a, [shared])) == ["created"]
    assert statuses(post(api, device_b, [dict(shared)])) == ["created"]
    assert sorted(PredictionLog.objects.values_list("device__name", flat=True)) == ["device-a", "device-b"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "not-a-uuid", "valid UUID"),
        ("id", 12, "UUID string"),
        ("created", "yesterday", "ISO 8601"),
        ("created", "2026-11-23T11:59:58", "time zone"),
        ("model_version", "v" * 81, "at most 80"),
        ("label", "", "empty"),
        ("label", 7, "string"),
        ("label", "x" * 101, "at most 100"),
        ("confidence", 1.5, "between 0 and 1"),
        ("confidence", -0.1, "between 0 and 1"),
        ("confidence", "0.9", "between 0 and 1"),
        ("confidence", True, "between 0 and 1"),
        ("probabilities", {str(n): 0.1 for n in range(11)}, "at most 10"),
        ("probabilities", {"7": 2}, "between 0 and 1"),
        ("probabilities", [0.9], "object"),
        ("latency_ms", -1, "0 or more"),
        ("features", "***", "base64"),
        ("features", base64.b64encode(b"abc").decode(), "multiple of 4"),
        ("features", base64.b64encode(np.zeros(4097, "<f4").tobytes()).decode(), "4096"),
        ("features", base64.b64encode(np.array([1, np.nan], "<f4").tobytes()).decode(), "NaN"),
        ("features", base64.b64encode(np.array([np.inf], "<f4").tobytes()).decode(), "NaN or infinite"),
        ("image", "i" * 201, "at most 200"),
        ("image_stats", [0.4], "object"),
        ("image_stats", {f"s{n}": 1.0 for n in range(17)}, "at most 16"),
        ("image_stats", {"Brightness": 0.4}, "a-z, 0-9"),
        ("image_stats", {"brightness": "0.4"}, "finite number"),
        ("image_stats", {"brightness": True}, "finite number"),
    ],
)
def test_an_invalid_record_is_rejected_naming_its_field_while_the_rest_of_the_batch_is_stored(
    api, device_a, field, value, message
):
    good, bad = record(), record(**{field: value})
    response = post(api, device_a, [good, bad])
    assert response.status_code == 200, response.content
    good_result, bad_result = response.json()["results"]
    assert good_result["status"] == "created"
    assert bad_result["status"] == "rejected"
    assert message in " ".join(bad_result["errors"][field]), bad_result
    assert list(PredictionLog.objects.values_list("client_id", flat=True)) == [uuid.UUID(good["id"])]


def test_a_record_missing_required_fields_names_each_of_them(api, device_a):
    response = post(api, device_a, [{"id": str(uuid.uuid4())}])
    errors = response.json()["results"][0]["errors"]
    assert set(errors) == {"created", "model_version", "label", "confidence"}


def test_a_record_that_is_not_an_object_is_rejected(api, device_a):
    response = post(api, device_a, ["just a string"])
    assert response.json()["results"] == [
        {"id": None, "status": "rejected", "errors": {"non_field_errors": ["Each prediction must be a JSON object."]}}
    ]


def test_unknown_keys_are_ignored_so_newer_devices_do_not_lose_logs(api, device_a):
    response = post(api, device_a, [record(model_label="3", drift=["ks"])])
    assert statuses(response) == ["created"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"confidence": NaN}', "not valid JSON"),
        (b"[]", '"predictions" list'),
        (b'{"predictions": {}}', '"predictions" list'),
        (b'{"predictions": []}', "1 to 1000"),
    ],
)
def test_a_wrong_envelope_is_refused_whole_with_400(api, device_a, raw, message):
    response = post_raw(api, device_a, raw)
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert not PredictionLog.objects.exists()


def test_more_than_1000_records_are_refused_whole(api, device_a):
    records = [{"id": str(uuid.uuid4())}] * 1001
    response = post(api, device_a, records)
    assert response.status_code == 400 and "1 to 1000" in response.json()["detail"]


def test_a_body_over_the_limit_is_refused_with_413(api, device_a, settings):
    settings.PREDICTIONS_MAX_BODY_BYTES = 4096
    response = post(api, device_a, [record() for _ in range(30)])
    assert response.status_code == 413, response.content
    assert not PredictionLog.objects.exists()


def test_a_non_json_content_type_is_refused_with_415(api, device_a):
    response = post_raw(api, device_a, json.dumps({"predictions": [record()]}).encode(), content_type="text/plain")
    assert response.status_code == 415
    assert not PredictionLog.objects.exists()


def test_access_needs_a_live_device_token(api, device_a, operator_api):
    raw = json.dumps({"predictions": [record()]}).encode()
    assert api.generic("POST", PREDICTIONS, raw, content_type="application/json").status_code == 401
    wrong = {"HTTP_AUTHORIZATION": device_a.auth["HTTP_AUTHORIZATION"][:-2] + "xx"}
    assert api.generic("POST", PREDICTIONS, raw, content_type="application/json", **wrong).status_code == 401
    assert operator_api.generic("POST", PREDICTIONS, raw, content_type="application/json").status_code in (401, 403)
    assert api.get(PREDICTIONS, **device_a.auth).status_code == 405
    assert not PredictionLog.objects.exists()


def test_a_revoked_token_is_refused(api, device_a):
    from devices import services

    services.revoke_credentials(device_a.device)
    assert post(api, device_a, [record()]).status_code == 401


def queries_for(api, persona, size: int) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert post(api, persona, [record() for _ in range(size)]).status_code == 200
    return [query["sql"] for query in queries.captured_queries]


@pytest.mark.postgres
def test_on_postgresql_a_new_batch_is_one_copy_whatever_its_size(api, device_a):
    few, many = queries_for(api, device_a, 2), queries_for(api, device_a, 1000)
    assert len(many) == len(few)
    assert PredictionLog.objects.count() == 1002


@pytest.mark.postgres
def test_on_postgresql_a_replayed_batch_falls_back_to_one_insert_on_conflict(api, device_a):
    batch = [record() for _ in range(50)]
    post(api, device_a, batch)
    response = post(api, device_a, batch + [fresh := record()])
    assert statuses(response) == ["duplicate"] * 50 + ["created"]
    assert PredictionLog.objects.filter(client_id=fresh["id"]).exists()
    assert PredictionLog.objects.count() == 51


def test_the_query_count_does_not_grow_per_record(api, device_a):
    few, many = queries_for(api, device_a, 2), queries_for(api, device_a, 400)
    # SQLite splits bulk inserts by its variable limit: a handful of statements, never one per row.
    assert len(many) <= len(few) + 8


# --- The uncertain band -----------------------------------------------------------------------


@pytest.fixture
def routed():
    calls = []

    def receiver(*, device_id, client_ids):
        calls.append((device_id, sorted(str(client_id) for client_id in client_ids)))

    hooks.register_uncertain_prediction_receiver(receiver)
    yield calls
    hooks.unregister_uncertain_prediction_receiver(receiver)


def test_new_predictions_in_the_default_band_are_routed_to_labeling_after_commit(
    api, device_a, routed, django_capture_on_commit_callbacks
):
    inside = [record(confidence=c) for c in (0.4, 0.55, 0.7)]
    outside = [record(confidence=c) for c in (0.39, 0.71, 0.99)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post(api, device_a, inside + outside)
    assert routed == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert routed == [(device_a.device.pk, sorted(r["id"] for r in inside))]


def test_a_per_model_band_overrides_the_default(api, device_a, routed, django_capture_on_commit_callbacks):
    ConfidenceBand.objects.create(model_name="digits", low=0.8, high=0.95)
    digits, other = record(confidence=0.9), record(confidence=0.5, model_version="cats@1")
    with django_capture_on_commit_callbacks(execute=True):
        post(api, device_a, [digits, other, record(confidence=0.5)])
    assert routed == [(device_a.device.pk, sorted([digits["id"], other["id"]]))]


def test_the_default_band_comes_from_settings(settings):
    settings.UNCERTAIN_BAND = (0.2, 0.3)
    assert predictions.uncertain_band("digits@9") == (0.2, 0.3)
    assert predictions.uncertain_band("") == (0.2, 0.3)


def test_replays_are_not_routed_again(api, device_a, routed, django_capture_on_commit_callbacks):
    batch = [record(confidence=0.5)]
    with django_capture_on_commit_callbacks(execute=True):
        post(api, device_a, batch)
        post(api, device_a, batch)
    assert len(routed) == 1


def test_without_a_receiver_nothing_is_routed_and_the_batch_is_stored(api, device_a, monkeypatch):
    monkeypatch.setattr(hooks, "_uncertain_prediction_receivers", [])  # labeling registers one; devices needs none
    assert hooks.uncertain_prediction_receivers() == ()
    assert statuses(post(api, device_a, [record(confidence=0.5)])) == ["created"]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "device_id = %(device)s AND created >= now() - interval '1 day' ORDER BY created DESC",
            "devices_pred_device_time",
        ),
        ("model_version = 'digits@3' ORDER BY created DESC LIMIT 50", "devices_pred_model_time"),
        ("model_version = 'digits@3' AND confidence BETWEEN 0.4 AND 0.7", "devices_pred_model_conf"),
    ],
)
def test_the_reading_queries_have_an_index(api, device_a, query, index):
    post(api, device_a, [record() for _ in range(20)])
    with connection.cursor() as cursor:
        # A 20-row table would be scanned (and sorted) anyway; forbid both to see which index serves.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(f"EXPLAIN SELECT id FROM devices_predictionlog WHERE {query}", {"device": device_a.device.pk})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan, plan
