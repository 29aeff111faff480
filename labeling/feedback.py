"""Feedback batches: a device's (or its application's) true labels for its own predictions.

``POST /api/v1/device/feedback`` with ``{"feedback": [{"id", "prediction_id", "label"}, ...]}``
(at most MAX_RECORDS). Each record is checked and stored alone, like prediction logs: the answer
lists one result per record, in order — ``created``, ``duplicate`` (its ``id`` was stored
before), ``rejected`` with the fields at fault, or ``not_found`` when this device logged no
such prediction (another device's predictions are not found either: nothing leaks).
"""

from __future__ import annotations

import uuid

from labeling import services

MAX_RECORDS = 500


class FeedbackError(ValueError):
    """The batch as a whole is malformed."""


def ingest(device, body) -> list[dict]:
    records = _records(body)
    return [_one(device, record) for record in records]


def _records(body) -> list:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise FeedbackError('The body must be an object with a "feedback" list.')
    records = body["feedback"]
    if len(records) > MAX_RECORDS:
        raise FeedbackError(f"At most {MAX_RECORDS} feedback records per request (got {len(records)}).")
    return records


def _one(device, record) -> dict:
    echo = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
    errors = _errors(record)
    if errors:
        return {"id": echo, "status": "rejected", "errors": errors}
    try:
        _, created = services.record_feedback(
            device, uuid.UUID(record["prediction_id"]), record["label"], client_id=uuid.UUID(record["id"])
        )
    except LookupError:
        return {
            "id": echo,
            "status": "not_found",
            "errors": {"prediction_id": ["This device logged no such prediction."]},
        }
    except services.LabelingError as exc:
        return {"id": echo, "status": "rejected", "errors": {"label": [str(exc)]}}
    return {"id": echo, "status": "created" if created else "duplicate"}


def _errors(record) -> dict[str, list[str]]:
    if not isinstance(record, dict):
        return {"record": ["Must be an object."]}
    errors = {}
    for name in ("id", "prediction_id"):
        if not _is_uuid(record.get(name)):
            errors[name] = ["Must be a UUID string."]
    label = record.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= 100:
        errors["label"] = ["Must be a string of 1 to 100 characters."]
    return errors


def _is_uuid(value) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
