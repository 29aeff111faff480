"""Where tasks come from, through the real paths: a device's uncertain predictions, an operator
confirming a drift event, quarantined samples, the random audit share; and device feedback
through its API."""

import json
import uuid

import numpy as np
import pytest
from django.utils import timezone

from devices.models import PredictionLog
from drift import verdicts
from drift.models import DriftEvent, DriftSample
from labeling import sources
from labeling.models import ClassSet, Label, LabelTask, TaskSource, TaskStatus

pytestmark = pytest.mark.django_db
FEEDBACK = "/api/v1/device/feedback"


def prediction(confidence: float, **fields) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "created": "2026-11-23T11:59:58Z",
        "model_version": "digits@1",
        "label": "7",
        "confidence": confidence,
        "probabilities": {"7": confidence, "1": round(1 - confidence, 6)},
        **fields,
    }


def post_predictions(api, persona, records, capture):
    with capture(execute=True):
        response = api.post("/api/v1/device/predictions", {"predictions": records}, format="json", **persona.auth)
    assert response.status_code == 200, response.content
    return response


def test_a_devices_uncertain_predictions_are_queued_after_commit(api, device_a, django_capture_on_commit_callbacks):
    unsure, sure = prediction(0.55), prediction(0.95)
    post_predictions(api, device_a, [unsure, sure], django_capture_on_commit_callbacks)
    (task,) = LabelTask.objects.all()
    assert (task.source, task.prediction_id, task.device_id) == (
        TaskSource.UNCERTAIN,
        uuid.UUID(unsure["id"]),
        device_a.device.pk,
    )
    assert (task.predicted_label, task.confidence, task.probabilities) == ("7", 0.55, unsure["probabilities"])
    assert task.uncertainty == pytest.approx(0.45)


def test_a_replayed_batch_queues_nothing_more(api, device_a, django_capture_on_commit_callbacks):
    batch = [prediction(0.5)]
    post_predictions(api, device_a, batch, django_capture_on_commit_callbacks)
    post_predictions(api, device_a, batch, django_capture_on_commit_callbacks)
    assert LabelTask.objects.count() == 1


def _event_with_samples(device, n=2):
    now = timezone.now()
    event = DriftEvent.objects.create(device=device, client_id=uuid.uuid4(), created=now, detector="knn_distance")
    samples = [
        DriftSample.objects.create(
            device=device,
            client_id=uuid.uuid4(),
            event=event,
            created=now,
            model_version="digits@1",
            label="3",
            confidence=0.6,
            features=np.ones(8, "<f4").tobytes() * (i + 1),
            image_key=f"{device.pk}/{i}.png",
        )
        for i in range(n)
    ]
    return event, samples


def test_confirming_a_drift_event_queues_its_samples(device_a, django_capture_on_commit_callbacks, settings):
    settings.LABELING_FOLD_DISTANCE = 0
    event, samples = _event_with_samples(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        verdicts.decide(DriftEvent.objects.filter(pk=event.pk), "confirmed")
    queued = LabelTask.objects.filter(source=TaskSource.DRIFT)
    assert sorted(queued.values_list("drift_sample", flat=True)) == sorted(s.pk for s in samples)
    assert set(queued.values_list("image_area", flat=True)) == {"drift_images"}


def test_rejecting_a_drift_event_queues_nothing(device_a, django_capture_on_commit_callbacks):
    event, _ = _event_with_samples(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        verdicts.decide(DriftEvent.objects.filter(pk=event.pk), "rejected")
    assert not LabelTask.objects.exists()


def test_recently_quarantined_samples_are_queued_once_by_the_sweep(device_a, settings):
    settings.LABELING_FOLD_DISTANCE = 0
    _event_with_samples(device_a.device, n=3)
    assert sources.enqueue_quarantined() == 3
    assert sources.enqueue_quarantined() == 0
    assert set(LabelTask.objects.values_list("source", flat=True)) == {TaskSource.QUARANTINE}


def test_the_audit_share_is_stable_and_close_to_the_rate(device_a):
    ClassSet.objects.filter(name="digits").update(audit_rate=0.1)
    device_a.device.model_version = "digits@1"
    device_a.device.save()
    PredictionLog.objects.bulk_create(
        PredictionLog(
            device=device_a.device,
            client_id=uuid.uuid4(),
            created=timezone.now(),
            model_version="digits@1",
            label="1",
            confidence=0.99,
        )
        for _ in range(2000)
    )
    queued = sources.sample_audit()
    assert 120 <= queued <= 280  # 10 % of 2,000, binomial spread
    assert sources.sample_audit() == 0  # the same predictions are picked again, and already queued
    assert set(LabelTask.objects.values_list("source", flat=True)) == {TaskSource.AUDIT}


# --- Feedback API -----------------------------------------------------------------------------


def post_feedback(api, persona, body, **extra):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.generic("POST", FEEDBACK, raw, content_type="application/json", **persona.auth, **extra)


def logged(persona) -> PredictionLog:
    return PredictionLog.objects.create(
        device=persona.device,
        client_id=uuid.uuid4(),
        created=timezone.now(),
        model_version="digits@1",
        label="7",
        confidence=0.9,
    )


def test_feedback_records_a_label_per_record_in_order(api, device_a):
    first, second = logged(device_a), logged(device_a)
    body = {
        "feedback": [
            {"id": str(uuid.uuid4()), "prediction_id": str(first.client_id), "label": "1"},
            {"id": str(uuid.uuid4()), "prediction_id": str(second.client_id), "label": "cat"},
            {"id": "nope", "prediction_id": str(second.client_id), "label": "2"},
        ]
    }
    results = post_feedback(api, device_a, body).json()["results"]
    assert [r["status"] for r in results] == ["created", "rejected", "rejected"]
    assert "not a class of digits" in results[1]["errors"]["label"][0]
    assert "id" in results[2]["errors"]
    assert list(Label.objects.values_list("value", "origin")) == [("1", "feedback")]
    assert LabelTask.objects.get().status == TaskStatus.DONE


def test_replayed_feedback_is_a_duplicate(api, device_a):
    record = {"id": str(uuid.uuid4()), "prediction_id": str(logged(device_a).client_id), "label": "1"}
    post_feedback(api, device_a, {"feedback": [record]})
    assert post_feedback(api, device_a, {"feedback": [record]}).json()["results"][0]["status"] == "duplicate"
    assert Label.objects.count() == 1


def test_feedback_on_another_devices_prediction_is_not_found(api, device_a, device_b):
    record = {"id": str(uuid.uuid4()), "prediction_id": str(logged(device_b).client_id), "label": "1"}
    assert post_feedback(api, device_a, {"feedback": [record]}).json()["results"][0]["status"] == "not_found"
    assert not Label.objects.exists()


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, '"feedback" list'),
        (json.dumps({"feedback": [{}] * 501}).encode(), 400, "At most 500"),
    ],
)
def test_a_malformed_feedback_body_is_refused_whole(api, device_a, raw, status, message):
    response = post_feedback(api, device_a, raw)
    assert response.status_code == status and message in response.json()["detail"]


def test_feedback_needs_a_device_token(api, operator_api, device_a):
    assert api.post(FEEDBACK, {"feedback": []}, format="json").status_code == 401
    assert operator_api.post(FEEDBACK, {"feedback": []}, format="json").status_code in (401, 403)


def test_an_oversized_feedback_body_is_refused_with_413(api, device_a):
    raw = json.dumps({"feedback": [], "pad": "x" * 300_000}).encode()
    assert post_feedback(api, device_a, raw).status_code == 413


def test_an_operator_can_queue_chosen_prediction_logs_once(device_a):
    chosen = [logged(device_a) for _ in range(3)]
    logs = PredictionLog.objects.filter(pk__in=[log.pk for log in chosen])
    assert sources.enqueue_predictions(logs) == 3
    assert sources.enqueue_predictions(logs) == 0
    assert set(LabelTask.objects.values_list("source", flat=True)) == {TaskSource.MANUAL}
