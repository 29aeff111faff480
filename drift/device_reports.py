"""Drift events a device reports by a direct API call instead of a package: the event and its
samples' predictions and features (images need a package). Stored exactly like packaged ones,
once per (device, id)."""

from __future__ import annotations

import numpy as np

from devices.ingest.archive import ArchiveError, check_storable, parse_time, validate
from devices.ingest.predictions import decode_features
from drift import services
from drift.services import EVENT_SCHEMA, SAMPLE_SCHEMA, Attachments, Origin

MAX_SAMPLES = 100


class ReportError(ValueError):
    pass


def report_event(device, data) -> dict:
    """Check the whole report first, then store it; answer what was stored."""
    try:
        event, samples = _checked(data)
    except (ArchiveError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    origin = Origin(device.pk)
    status = services.store_event(origin, event, Attachments())
    stored = services.store_samples(origin, samples)
    return {"id": event["id"], "status": status, "samples": stored}


def _checked(data) -> tuple[dict, list[tuple[dict, Attachments]]]:
    if not isinstance(data, dict):
        raise ReportError("Body must be a drift event object.")
    event = {key: value for key, value in data.items() if key != "samples"}
    _check_record(event, EVENT_SCHEMA, "event")
    samples = data.get("samples", [])
    if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
        raise ReportError(f'"samples" must be a list of at most {MAX_SAMPLES} samples.')
    return event, [_sample(sample, event["id"], f"samples[{n}]") for n, sample in enumerate(samples)]


def _sample(sample, event_id: str, where: str) -> tuple[dict, Attachments]:
    if not isinstance(sample, dict):
        raise ReportError(f"{where} must be an object.")
    record = {"event_id": event_id, **{key: value for key, value in sample.items() if key != "features"}}
    _check_record(record, SAMPLE_SCHEMA, where)
    if record["event_id"] != event_id:
        raise ReportError(f"{where}.event_id must be the event's id {event_id} (or left out).")
    features = sample.get("features")
    try:
        vector = decode_features(features) if features is not None else None
    except ValueError as exc:
        raise ReportError(f"{where}.features: {exc}") from None
    if vector is not None and not np.isfinite(np.frombuffer(vector, dtype="<f4")).all():
        raise ReportError(f"{where}.features: must not contain NaN or infinite values.")
    return record, Attachments(features=vector)


def _check_record(record: dict, schema: dict, where: str) -> None:
    validate(record, schema, where)
    check_storable(record, where)
    parse_time(record["created"], f"{where} at created")
