"""``metrics``: heartbeats that never got through, one JSON object per line of
``metrics.jsonl``. Stored as telemetry history (unique on device and heartbeat id, like a live
heartbeat) without touching the device's live status."""

from __future__ import annotations

import re
import uuid

import orjson
from django.utils import timezone

from devices.ingest.archive import ArchiveError, check_storable, parse_time, validate
from devices.models import METRIC_FIELDS, PackageKind, Telemetry

KIND = PackageKind.METRICS
MEMBERS = (re.compile(r"metrics\.jsonl"),)
MAX_LINES = 10_000

_NUMBER = {"type": ["number", "null"], "minimum": 0}
SCHEMA = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "sent_at": {"type": ["string", "null"], "format": "date-time"},
        **dict.fromkeys(METRIC_FIELDS, _NUMBER),
        "temperature_c": {"type": ["number", "null"], "minimum": -100, "maximum": 200},
        "memory_percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "disk_percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "client_version": {"type": "string", "maxLength": 40},
        "model_version": {"type": "string", "maxLength": 80},
    },
}


def handle(package, contents) -> dict:
    heartbeats = _read_lines(contents.files.get("metrics.jsonl", b""))
    rows = {row.client_id: row for row in (_telemetry(package, heartbeat) for heartbeat in heartbeats)}
    stored = Telemetry.objects.filter(device=package.device_id, client_id__in=list(rows))
    known = set(stored.values_list("client_id", flat=True))
    fresh = [row for client_id, row in rows.items() if client_id not in known]
    Telemetry.objects.bulk_create(fresh, ignore_conflicts=True)
    return {"heartbeats": len(heartbeats), "stored": len(fresh)}


def _read_lines(data: bytes) -> list[dict]:
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) > MAX_LINES:
        raise ArchiveError(f"metrics.jsonl has {len(lines)} lines, over the limit of {MAX_LINES}.")
    heartbeats = []
    for number, line in enumerate(lines, start=1):
        try:
            heartbeat = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ArchiveError(f"metrics.jsonl line {number} is not valid JSON: {exc}.") from None
        validate(heartbeat, SCHEMA, f"metrics.jsonl line {number}")
        check_storable(heartbeat, f"metrics.jsonl line {number}")
        heartbeats.append(heartbeat)
    return heartbeats


def _telemetry(package, heartbeat: dict) -> Telemetry:
    sent_at = heartbeat.get("sent_at")
    return Telemetry(
        device_id=package.device_id,
        client_id=uuid.UUID(heartbeat["id"]),
        received_at=timezone.now(),
        sent_at=parse_time(sent_at, "metrics.jsonl at sent_at") if sent_at else None,
        client_version=heartbeat.get("client_version", ""),
        model_version=heartbeat.get("model_version", ""),
        **{name: heartbeat.get(name) for name in METRIC_FIELDS},
    )
