"""Where tasks come from. Each source turns its rows into ``queue.Candidate``s and enqueues them;
all are idempotent (a task's key names its origin).

- uncertain predictions: ``devices`` calls ``on_uncertain_predictions`` after commit with the
  new in-band prediction ids (registered in ``LabelingConfig.ready``);
- confirmed-drift samples: ``drift`` calls ``on_confirmed_samples`` when an operator confirms
  an event; the samples are tied to the event's incident for their priority;
- quarantined samples: ``enqueue_quarantined`` (beat) queues samples devices flagged recently;
- random audit: ``sample_audit`` (beat) queues the class set's ``audit_rate`` share of recent
  confident predictions, chosen by a hash of their id (stable: a rerun picks the same ones);
- chosen by an operator: ``enqueue_predictions`` (the admin action on prediction logs).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from devices.models import Device, PredictionImage, PredictionLog
from drift.models import DriftSample
from labeling.models import ClassSet, TaskSource
from labeling.queue import Candidate, drift_sample_key, enqueue, prediction_key

PREDICTION_IMAGES, DRIFT_IMAGES = "prediction_images", "drift_images"
PREDICTION_COLUMNS = ("device_id", "client_id", "model_version", "label", "confidence", "probabilities", "features")


def on_uncertain_predictions(device_id, client_ids) -> None:
    """The devices hook, called after the batch commits in the device's request: queueing costs a
    query and an insert per task, so it runs in a worker (the ``ingest`` queue), not here."""
    from labeling.tasks import queue_uncertain_predictions

    queue_uncertain_predictions.delay(str(device_id), [str(client_id) for client_id in client_ids])


def enqueue_uncertain(device_id, client_ids) -> int:
    rows = PredictionLog.objects.filter(device_id=device_id, client_id__in=list(client_ids)).values(*PREDICTION_COLUMNS)
    return len(enqueue(prediction_candidates(list(rows), TaskSource.UNCERTAIN)))


def prediction_candidates(rows: list[dict], source: str) -> list[Candidate]:
    images = _prediction_images(rows)
    return [
        Candidate(
            key=prediction_key(row["device_id"], row["client_id"]),
            source=source,
            model_version=row["model_version"],
            predicted_label=row["label"],
            confidence=row["confidence"],
            probabilities=row["probabilities"],
            features=None if row["features"] is None else bytes(row["features"]),
            device_id=row["device_id"],
            prediction_id=row["client_id"],
            image_area=PREDICTION_IMAGES if (row["device_id"], row["client_id"]) in images else "",
            image_key=images.get((row["device_id"], row["client_id"]), ""),
        )
        for row in rows
    ]


def _prediction_images(rows: list[dict]) -> dict:
    """Images already shipped for these predictions; one shipped later is found when served."""
    if not rows:
        return {}
    wanted = Q()
    for device_id in {row["device_id"] for row in rows}:
        ids = [row["client_id"] for row in rows if row["device_id"] == device_id]
        wanted |= Q(device_id=device_id, prediction_id__in=ids)
    found = PredictionImage.objects.filter(wanted).values_list("device_id", "prediction_id", "storage_key")
    return {(device_id, prediction_id): key for device_id, prediction_id, key in found}


def on_confirmed_samples(event_id: int, sample_ids) -> int:
    samples = DriftSample.objects.filter(pk__in=list(sample_ids)).select_related("event")
    return len(enqueue([_sample_candidate(sample, TaskSource.DRIFT) for sample in samples]))


def _sample_candidate(sample: DriftSample, source: str) -> Candidate:
    probabilities = sample.payload.get("probabilities") if isinstance(sample.payload, dict) else None
    return Candidate(
        key=drift_sample_key(sample.pk),
        source=source,
        model_version=sample.model_version,
        predicted_label=sample.label,
        confidence=sample.confidence,
        probabilities=probabilities if isinstance(probabilities, dict) else None,
        features=None if sample.features is None else bytes(sample.features),
        device_id=sample.device_id,
        drift_sample_id=sample.pk,
        image_area=DRIFT_IMAGES if sample.image_key else "",
        image_key=sample.image_key,
        incident_id=sample.event.incident_id if sample.event_id else None,
    )


def enqueue_quarantined(hours: int = 24, now=None) -> int:
    """Queue the quarantined samples received in the last ``hours`` (already queued ones are skipped
    by key). Samples of a confirmed event come in as ``drift``; the rest as ``quarantine``."""
    now = now or timezone.now()
    samples = DriftSample.objects.filter(received_at__gte=now - timedelta(hours=hours)).select_related("event")
    return len(enqueue([_sample_candidate(sample, TaskSource.QUARANTINE) for sample in samples.iterator()]))


def sample_audit(hours: int = 1, now=None) -> int:
    """Queue each audited class set's ``audit_rate`` share of the last ``hours`` of predictions."""
    now = now or timezone.now()
    queued = 0
    for class_set in ClassSet.objects.filter(audit_rate__gt=0):
        versions = _versions_of(class_set.name)
        recent = PredictionLog.objects.filter(model_version__in=versions, created__gte=now - timedelta(hours=hours))
        chosen = [
            row
            for row in recent.values(*PREDICTION_COLUMNS).iterator()
            if _audited(row["client_id"], class_set.audit_rate)
        ]
        queued += len(enqueue(prediction_candidates(chosen, TaskSource.AUDIT)))
    return queued


def _versions_of(name: str) -> list[str]:
    # The versions the fleet runs (Device.model_version): the prediction index is by version.
    running = Device.objects.filter(model_version__startswith=f"{name}@").values_list("model_version", flat=True)
    return sorted(set(running) | {name})


def _audited(client_id: uuid.UUID, rate: float) -> bool:
    return (client_id.int % 10_000) < rate * 10_000


def enqueue_predictions(logs, source: str = TaskSource.MANUAL) -> int:
    """Queue chosen prediction logs (the admin action on prediction logs); returns how many are new."""
    return len(enqueue(prediction_candidates(list(logs.values(*PREDICTION_COLUMNS)), source)))
