"""Prediction logs: validate a device's batch record by record and store it at COPY-like speed.

A batch of 1,000 records must be stored in a few milliseconds, so this path avoids per-row ORM
work: records are checked by plain functions, and on PostgreSQL stored by a binary COPY; only a
batch that holds already stored records falls back to ``INSERT … SELECT FROM unnest(arrays) ON
CONFLICT DO NOTHING RETURNING``, which tells which records were new (``created``) and which were
replays (``duplicate``).

Optional per record: ``probabilities`` (top-k label → probability), ``latency_ms``, ``features``
(base64 float32), ``image`` (a reference) and ``image_stats`` (statistic name → number, e.g.
brightness, contrast, laplacian_variance, red_mean: drift reports test each of them).
"""

from __future__ import annotations

import binascii
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson
import psycopg
import psycopg.types.json
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from devices import hooks
from devices.models import ConfidenceBand, Device, PredictionLog

MAX_BATCH = 1000
MAX_PROBABILITIES = 10
MAX_IMAGE_STATS = 16
IMAGE_STAT_NAME = re.compile(r"[a-z0-9_]{1,32}")
MAX_FEATURES = 4096


class BatchError(ValueError):
    """The envelope is wrong: the whole request is refused (400)."""


@dataclass
class Batch:
    """A checked batch: the valid rows to store, each with its result (status filled in once
    stored), and one result per record in request order."""

    accepted: list[tuple[dict, dict]] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return [row for row, _ in self.accepted]


def parse_batch(body: bytes) -> list:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BatchError(f"Body is not valid JSON: {exc}") from None
    records = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise BatchError('Body must be an object with a "predictions" list.')
    if not 1 <= len(records) <= MAX_BATCH:
        raise BatchError(f'"predictions" must hold 1 to {MAX_BATCH} records, not {len(records)}.')
    return records


def check_batch(records: list) -> Batch:
    batch, seen, pending = Batch(), set(), []
    for record in records:
        row, errors = check_record(record)
        if errors:
            result = {"id": _echo_id(record), "status": "rejected", "errors": errors}
        elif row["client_id"] in seen:
            result = {"id": str(row["client_id"]), "status": "duplicate"}
        else:
            seen.add(row["client_id"])
            result = {"id": str(row["client_id"]), "status": None}  # filled in by ingest()
            pending.append((row, result))
        batch.results.append(result)
    batch.accepted = _reject_non_finite_features(pending)
    return batch


def check_record(record) -> tuple[dict, dict]:
    """``(row, {})`` for a valid record, ``({}, errors)`` naming each wrong field otherwise."""
    try:
        return _fast_row(record), {}
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        row, errors = _detailed_row(record)
        return ({}, errors) if errors else (row, {})


def _fast_row(record: dict) -> dict:
    """The common case in one pass, with no per-field bookkeeping; any doubt raises and
    ``_detailed_row`` then says exactly what is wrong."""
    confidence = record["confidence"]
    if type(confidence) not in (float, int) or not 0.0 <= confidence <= 1.0:
        raise ValueError
    created = datetime.fromisoformat(record["created"])
    model_version, label = record["model_version"], record["label"]
    if created.tzinfo is None or type(model_version) is not str or type(label) is not str:
        raise ValueError
    if len(model_version) > 80 or not 0 < len(label) <= 100:
        raise ValueError
    row = {
        "client_id": uuid.UUID(record["id"]),
        "created": created,
        "model_version": model_version,
        "label": label,
        "confidence": float(confidence),
    }
    for name, check in _OPTIONAL:
        value = record.get(name)
        if value is not None:
            row[name] = check(value)
    return row


def _detailed_row(record) -> tuple[dict, dict]:
    if not isinstance(record, dict):
        return {}, {"non_field_errors": ["Each prediction must be a JSON object."]}
    row, errors = {}, {}
    for name, check in _FIELDS:
        value = record.get(name)
        if value is None:
            if name in _REQUIRED:
                errors[name] = ["This field is required."]
            continue
        try:
            row[_COLUMNS.get(name, name)] = check(value)
        except ValueError as exc:
            errors[name] = [str(exc)]
    return row, errors


def _reject_non_finite_features(pending: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """One vectorised finiteness check over every feature vector of the batch; the rows with a
    NaN or infinity (rare) are then found one by one and rejected."""
    vectors = [row["features"] for row, _ in pending if "features" in row]
    if not vectors or np.isfinite(np.frombuffer(b"".join(vectors), dtype="<f4")).all():
        return pending
    accepted = []
    for row, result in pending:
        if "features" in row and not np.isfinite(np.frombuffer(row["features"], dtype="<f4")).all():
            result.update(status="rejected", errors={"features": ["Must not contain NaN or infinite values."]})
        else:
            accepted.append((row, result))
    return accepted


def _uuid(value) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError("Must be a UUID string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError("Must be a valid UUID.") from None


def _time(value) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("Must be an ISO 8601 time string.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("Must be an ISO 8601 time, e.g. 2026-11-23T12:00:00.123Z.") from None
    if moment.tzinfo is None:
        raise ValueError("Must include a time zone (Z or an offset).")
    return moment


def _text(limit: int, *, blank: bool):
    def check(value) -> str:
        if not isinstance(value, str):
            raise ValueError("Must be a string.")
        if len(value) > limit:
            raise ValueError(f"Must be at most {limit} characters.")
        if not blank and not value:
            raise ValueError("Must not be empty.")
        return value

    return check


def _number(value, minimum: float, maximum: float, message: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not minimum <= value <= maximum:
        raise ValueError(message)
    return float(value)


def _confidence(value) -> float:
    return _number(value, 0.0, 1.0, "Must be a number between 0 and 1.")


def _latency(value) -> float:
    return _number(value, 0.0, math.inf, "Must be a number of milliseconds, 0 or more.")


def _probabilities(value) -> bytes:
    if not isinstance(value, dict) or len(value) > MAX_PROBABILITIES:
        raise ValueError(f"Must be an object of at most {MAX_PROBABILITIES} label → probability entries.")
    for label, probability in value.items():
        if len(label) > 100:
            raise ValueError("Labels must be at most 100 characters.")
        _number(probability, 0.0, 1.0, f"Probability of {label[:20]!r} must be a number between 0 and 1.")
    return orjson.dumps(value)


def decode_features(value) -> bytes:
    if not isinstance(value, str):
        raise ValueError("Must be a base64 string of float32 little-endian values.")
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise ValueError("Must be valid base64.") from None
    if not raw or len(raw) % 4 or len(raw) > 4 * MAX_FEATURES:
        raise ValueError(f"Must hold 1 to {MAX_FEATURES} float32 values (a multiple of 4 bytes).")
    return raw  # finiteness is checked for the whole batch at once


def _image(value) -> str:
    return _text(200, blank=True)(value)


def _image_stats(value) -> bytes:
    if not isinstance(value, dict) or len(value) > MAX_IMAGE_STATS:
        raise ValueError(f"Must be an object of at most {MAX_IMAGE_STATS} statistic name → number entries.")
    for name, number in value.items():
        if not IMAGE_STAT_NAME.fullmatch(name):
            raise ValueError(f"Statistic names must be 1 to 32 of a-z, 0-9 and _ ({name[:40]!r} is not).")
        _number(number, -math.inf, math.inf, f"Statistic {name!r} must be a finite number.")
    return orjson.dumps(value)


_FIELDS = (
    ("id", _uuid),
    ("created", _time),
    ("model_version", _text(80, blank=True)),
    ("label", _text(100, blank=False)),
    ("confidence", _confidence),
    ("probabilities", _probabilities),
    ("latency_ms", _latency),
    ("features", decode_features),
    ("image", _image),
    ("image_stats", _image_stats),
)
_REQUIRED = {"id", "created", "model_version", "label", "confidence"}
_OPTIONAL = tuple((name, check) for name, check in _FIELDS if name not in _REQUIRED)
_COLUMNS = {"id": "client_id"}


def _echo_id(record) -> str | None:
    value = record.get("id") if isinstance(record, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None


# --- Storing ----------------------------------------------------------------------------------


def ingest(device: Device, records: list) -> list[dict]:
    """Store the valid records of one batch; answer one result per record, in order."""
    batch = check_batch(records)
    if batch.accepted:
        rows = batch.rows
        with transaction.atomic():
            created = store_rows(device, rows, timezone.now())
            _route_uncertain(device, rows, created)
        for row, result in batch.accepted:
            result["status"] = "created" if row["client_id"] in created else "duplicate"
    return batch.results


def store_rows(device: Device, rows: list[dict], now: datetime) -> set[uuid.UUID]:
    """Insert the rows not stored yet; return the client ids this call inserted."""
    if connection.vendor == "postgresql":
        return _store_postgresql(device, rows, now)
    return _store_portable(device, rows, now)


_COPY_COLUMNS = (
    "device_id, received_at, client_id, created, model_version, label, confidence,"
    " probabilities, latency_ms, features, image, image_stats"
)
_COPY_TYPES = [
    "uuid",
    "timestamptz",
    "uuid",
    "timestamptz",
    "text",
    "text",
    "float8",
    "jsonb",
    "float8",
    "bytea",
    "text",
    "jsonb",
]


def _store_postgresql(device: Device, rows: list[dict], now: datetime) -> set[uuid.UUID]:
    """Binary COPY writes a new batch as fast as PostgreSQL takes rows. A batch holding any
    stored record (a replay, or a concurrent request with the same records) makes COPY fail on
    the unique constraint; only then is it stored row-safely with ON CONFLICT DO NOTHING."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _copy(cursor.cursor, device, rows, now)
    except (IntegrityError, psycopg.errors.UniqueViolation):  # COPY runs on the raw cursor: psycopg's own error
        return _insert_on_conflict(device, rows, now)
    return {row["client_id"] for row in rows}


def _copy(raw_cursor, device: Device, rows: list[dict], now: datetime) -> None:
    with raw_cursor.copy(f"COPY devices_predictionlog ({_COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(
                (
                    device.pk,
                    now,
                    row["client_id"],
                    row["created"],
                    row["model_version"],
                    row["label"],
                    row["confidence"],
                    _jsonb(row.get("probabilities")),
                    row.get("latency_ms"),
                    row.get("features"),
                    row.get("image", ""),
                    _jsonb(row.get("image_stats")),
                )
            )


# Column names are constants and values are parameters.
_INSERT_ON_CONFLICT = f"""
INSERT INTO devices_predictionlog ({_COPY_COLUMNS})
SELECT %s, %s, r.client_id, r.created, r.model_version, r.label, r.confidence,
       r.probabilities::jsonb, r.latency_ms, r.features, r.image, r.image_stats::jsonb
FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::text[], %s::float8[],
            %s::text[], %s::float8[], %s::bytea[], %s::text[], %s::text[])
     AS r(client_id, created, model_version, label, confidence, probabilities, latency_ms, features, image,
          image_stats)
ON CONFLICT (device_id, client_id) DO NOTHING
RETURNING client_id
"""  # noqa: S608


def _insert_on_conflict(device: Device, rows: list[dict], now: datetime) -> set[uuid.UUID]:
    columns = [
        [row["client_id"] for row in rows],
        [row["created"] for row in rows],
        [row["model_version"] for row in rows],
        [row["label"] for row in rows],
        [row["confidence"] for row in rows],
        [_text_or_none(row.get("probabilities")) for row in rows],
        [row.get("latency_ms") for row in rows],
        [row.get("features") for row in rows],
        [row.get("image", "") for row in rows],
        [_text_or_none(row.get("image_stats")) for row in rows],
    ]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_ON_CONFLICT, [device.pk, now, *columns])
        return {client_id for (client_id,) in cursor.fetchall()}


def _jsonb(serialized: bytes | None):
    # Already JSON (orjson, while checking): hand the bytes to the jsonb dumper unchanged.
    return None if serialized is None else psycopg.types.json.Jsonb(serialized, dumps=_unchanged)


def _unchanged(serialized: bytes) -> bytes:
    return serialized


def _text_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _store_portable(device: Device, rows: list[dict], now: datetime) -> set[uuid.UUID]:
    # SQLite (embedded): transactions are IMMEDIATE, so nothing else writes between the
    # existence check and the insert.
    ids = [row["client_id"] for row in rows]
    existing = set(PredictionLog.objects.filter(device=device, client_id__in=ids).values_list("client_id", flat=True))
    fresh = [
        PredictionLog(device=device, received_at=now, **_portable(row))
        for row in rows
        if row["client_id"] not in existing
    ]
    PredictionLog.objects.bulk_create(fresh, ignore_conflicts=True, batch_size=500)
    return {row.client_id for row in fresh}


def _portable(row: dict) -> dict:
    row = dict(row)
    for name in ("probabilities", "image_stats"):
        if row.get(name) is not None:
            row[name] = orjson.loads(row[name])
    return row


# --- Routing the uncertain band to labeling ---------------------------------------------------


def uncertain_band(model_version: str) -> tuple[float, float]:
    """The band of confidences routed to labeling for a model version ('digits@3' → 'digits')."""
    name = model_version.split("@", 1)[0]
    band = ConfidenceBand.objects.filter(model_name=name).values_list("low", "high").first() if name else None
    return band or settings.UNCERTAIN_BAND


def _route_uncertain(device: Device, rows: list[dict], created: set[uuid.UUID]) -> None:
    receivers = hooks.uncertain_prediction_receivers()
    if not receivers or not created:
        return
    bands: dict[str, tuple[float, float]] = {}
    chosen = []
    for row in rows:
        if row["client_id"] not in created:
            continue
        version = row["model_version"]
        low, high = bands.get(version) or bands.setdefault(version, uncertain_band(version))
        if low <= row["confidence"] <= high:
            chosen.append(row["client_id"])
    if chosen:
        transaction.on_commit(lambda: _notify(receivers, device.pk, chosen))


def _notify(receivers, device_id, client_ids: list[uuid.UUID]) -> None:
    for receiver in receivers:
        receiver(device_id=device_id, client_ids=client_ids)
