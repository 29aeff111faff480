"""Verdicts: operators decide, the deciding device is told once per status change until it
acknowledges, other devices never see it, and confirmed samples go to labeling."""

import base64
import json
import uuid

import numpy as np
import pytest

from drift import hooks, verdicts
from drift.models import DriftEvent, DriftSample, DriftStatus

pytestmark = pytest.mark.django_db
HEARTBEAT, ACKS, REPORT = "/api/v1/device/heartbeat", "/api/v1/device/verdict-acks", "/api/v1/device/drift-events"


def event_body(**fields) -> dict:
    return {"id": str(uuid.uuid4()), "created": "2026-11-23T11:58:12.500Z", "detector": "knn_distance", **fields}


def report(api, persona, body):
    raw = json.dumps(body).encode()
    return api.generic("POST", REPORT, raw, content_type="application/json", **persona.auth)


def reported(api, persona, **fields) -> DriftEvent:
    body = event_body(**fields)
    assert report(api, persona, body).status_code == 201
    return DriftEvent.objects.get(client_id=body["id"])


def owed(api, persona) -> list[dict]:
    from conftest import heartbeat_body

    response = api.post(HEARTBEAT, heartbeat_body(), format="json", **persona.auth)
    assert response.status_code == 200, response.content
    return response.json()["verdicts"]


def ack(api, persona, *acks):
    raw = json.dumps({"acks": [{"event_id": str(e.client_id), "status": s} for e, s in acks]}).encode()
    return api.generic("POST", ACKS, raw, content_type="application/json", **persona.auth)


def decide(event, status, **kwargs) -> int:
    return verdicts.decide(DriftEvent.objects.filter(pk=event.pk), status, **kwargs)


def test_every_decision_is_kept_in_the_history_with_who_when_and_why(api, device_a, operator):
    event = reported(api, device_a)
    decide(event, "confirmed", by=operator, note="lens fogged")
    decide(event, "resolved", by=operator, note="lens cleaned")
    decide(event, "confirmed")  # refused: resolved is final, and leaves no step behind
    steps = list(event.verdicts.values_list("previous_status", "status", "decided_by", "note"))
    assert steps == [
        ("pending", "confirmed", operator.pk, "lens fogged"),
        ("confirmed", "resolved", operator.pk, "lens cleaned"),
    ]


def test_a_verdict_is_listed_in_every_sync_until_the_device_acknowledges_it(api, device_a, operator):
    event = reported(api, device_a)
    assert owed(api, device_a) == []  # pending: nothing to say yet
    assert decide(event, "confirmed", by=operator, note="lens dirty on line 2") == 1
    wanted = [{"event_id": str(event.client_id), "status": "confirmed"}]
    assert owed(api, device_a) == wanted
    assert owed(api, device_a) == wanted  # the device missed the answer: still owed
    assert ack(api, device_a, (event, "confirmed")).json() == {"acknowledged": 1}
    assert owed(api, device_a) == []
    assert ack(api, device_a, (event, "confirmed")).json() == {"acknowledged": 0}  # a replayed ack
    event.refresh_from_db()
    assert (event.status, event.decided_by, event.decision_note) == ("confirmed", operator, "lens dirty on line 2")
    assert event.acknowledged_status == "confirmed" and event.acknowledged_at is not None


def test_a_revised_verdict_is_owed_again_and_an_ack_of_the_old_one_does_not_hide_it(api, device_a):
    event = reported(api, device_a)
    decide(event, "confirmed")
    owed(api, device_a)
    decide(event, "rejected")  # revised before the device acknowledged "confirmed"
    assert ack(api, device_a, (event, "confirmed")).json() == {"acknowledged": 0}
    assert owed(api, device_a) == [{"event_id": str(event.client_id), "status": "rejected"}]
    ack(api, device_a, (event, "rejected"))
    assert owed(api, device_a) == []


def test_a_device_never_sees_or_acknowledges_another_devices_verdicts(api, device_a, device_b):
    event = reported(api, device_a)
    decide(event, "rejected")
    assert owed(api, device_b) == []
    assert ack(api, device_b, (event, "rejected")).json() == {"acknowledged": 0}
    assert owed(api, device_a) == [{"event_id": str(event.client_id), "status": "rejected"}]


def test_resolved_events_are_not_sent_and_only_confirmed_ones_can_be_resolved(api, device_a):
    pending, confirmed = reported(api, device_a), reported(api, device_a)
    decide(confirmed, "confirmed")
    ack(api, device_a, (confirmed, "confirmed"))
    assert decide(pending, "resolved") == 0
    assert decide(confirmed, "resolved") == 1
    assert owed(api, device_a) == []
    with pytest.raises(verdicts.VerdictError):
        decide(pending, "pending")


def test_confirmed_samples_are_handed_to_labeling_after_commit(api, device_a, django_capture_on_commit_callbacks):
    calls = []

    def receiver(*, event_id, sample_ids):
        calls.append((event_id, sorted(sample_ids)))

    hooks.register_confirmed_samples_receiver(receiver)
    try:
        event = reported(api, device_a, samples=[{"id": str(uuid.uuid4()), "created": "2026-11-23T11:58:00Z"}])
        with django_capture_on_commit_callbacks(execute=True):
            decide(event, "rejected")
        assert calls == []
        with django_capture_on_commit_callbacks(execute=True):
            decide(event, "confirmed")
    finally:
        hooks.unregister_confirmed_samples_receiver(receiver)
    assert calls == [(event.pk, list(DriftSample.objects.filter(event=event).values_list("pk", flat=True)))]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", '"acks" list'),
        (b'{"acks": [{"status": "confirmed"}]}', "event_id string"),
        (b'{"acks": [{"event_id": "x", "status": "confirmed"}]}', "not a UUID"),
    ],
)
def test_malformed_acks_are_refused_with_400(api, device_a, body, message):
    response = api.generic("POST", ACKS, body, content_type="application/json", **device_a.auth)
    assert response.status_code == 400 and message in response.json()["detail"]


def test_acks_with_an_unknown_status_are_ignored(api, device_a):
    event = reported(api, device_a)
    decide(event, "confirmed")
    assert ack(api, device_a, (event, "maybe")).json() == {"acknowledged": 0}
    assert owed(api, device_a) != []


def test_acks_need_a_device_token(api, operator_api):
    raw = json.dumps({"acks": []}).encode()
    assert api.generic("POST", ACKS, raw, content_type="application/json").status_code == 401
    assert operator_api.generic("POST", ACKS, raw, content_type="application/json").status_code == 401


# --- Direct reports ---------------------------------------------------------------------------


def test_a_direct_report_stores_the_event_and_its_samples_with_features(api, device_a):
    vector = np.arange(4, dtype="<f4")
    sample = {"id": str(uuid.uuid4()), "created": "2026-11-23T11:58:00Z", "label": "7", "confidence": 0.51}
    body = event_body(scores={"distance": 3.2}, threshold=2.5, model_version="digits@3")
    body["samples"] = [{**sample, "features": base64.b64encode(vector.tobytes()).decode()}]
    response = report(api, device_a, body)
    assert response.status_code == 201, response.content
    assert response.json() == {"id": body["id"], "status": "created", "samples": {"created": 1, "duplicate": 0}}
    event = DriftEvent.objects.get()
    assert (event.detector, event.model_version, event.payload["scores"]) == (
        "knn_distance",
        "digits@3",
        {"distance": 3.2},
    )
    stored = DriftSample.objects.get()
    assert stored.event == event and np.array_equal(np.frombuffer(bytes(stored.features), "<f4"), vector)
    replay = report(api, device_a, body)
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    assert DriftEvent.objects.count() == DriftSample.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "nope"}, "is not a 'uuid'"),
        ({"created": "yesterday"}, "is not a 'date-time'"),
        ({"detector": "x" * 65}, "is too long"),
        ({"samples": {}}, '"samples" must be a list'),
        ({"samples": [{"id": str(uuid.uuid4())}]}, "'created' is a required property"),
        (
            {"samples": [{"id": str(uuid.uuid4()), "created": "2026-11-23T11:58:00Z", "features": "***"}]},
            "features: Must be valid base64",
        ),
        (
            {
                "samples": [
                    {
                        "id": str(uuid.uuid4()),
                        "created": "2026-11-23T11:58:00Z",
                        "features": base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode(),
                    }
                ]
            },
            "NaN",
        ),
        ({"note": "a\u0000b"}, "NUL"),
    ],
)
def test_a_malformed_direct_report_is_refused_naming_the_problem_and_stores_nothing(api, device_a, change, message):
    response = report(api, device_a, {**event_body(), **change})
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert not DriftEvent.objects.exists() and not DriftSample.objects.exists()


def test_a_verdict_changes_publish_a_live_event(api, device_a, operator, django_capture_on_commit_callbacks):
    from unittest import mock

    event = reported(api, device_a)
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        decide(event, "confirmed", by=operator)
    topic, name, data = send.call_args.args
    assert (topic, name, data()["status"]) == ("drift", "drift.verdict", DriftStatus.CONFIRMED)
