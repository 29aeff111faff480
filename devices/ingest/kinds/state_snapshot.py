"""``state_snapshot``: a device's own state (detector states, adapter, bundle slots) at one time.
One member, ``state.json``: ``{"id": <uuid>, "created": <date-time>, "state": {...}}`` (other
top-level keys are ignored), at most MAX_BYTES, its id the one record in ``manifest.records``.
Rows are unique on (device, id), so a snapshot that arrives again is skipped.
"""

from __future__ import annotations

import re
import uuid

from devices.ingest.archive import ArchiveError, check_storable, parse_time
from devices.models import PackageKind, StateSnapshot

KIND = PackageKind.STATE_SNAPSHOT
MEMBER = "state.json"
MEMBERS = (re.compile(r"state\.json"),)
MAX_BYTES = 1024 * 1024

SCHEMA = {
    "type": "object",
    "required": ["id", "created", "state"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "created": {"type": "string", "format": "date-time"},
        "state": {"type": "object"},
    },
}


def handle(package, contents) -> dict:
    snapshot = _read(contents)
    client_id = uuid.UUID(snapshot["id"])
    _check_records(contents.manifest, client_id)
    if StateSnapshot.objects.filter(device=package.device_id, client_id=client_id).exists():
        return {"snapshots": 1, "stored": 0}
    row = StateSnapshot(
        device_id=package.device_id,
        client_id=client_id,
        created=parse_time(snapshot["created"], f"{MEMBER} at created"),
        state=snapshot["state"],
        package=package,
    )
    StateSnapshot.objects.bulk_create([row], ignore_conflicts=True)
    return {"snapshots": 1, "stored": 1}


def _read(contents) -> dict:
    data = contents.files.get(MEMBER)
    if data is None:
        raise ArchiveError(f"A {KIND} package must hold {MEMBER}.")
    if len(data) > MAX_BYTES:
        raise ArchiveError(f"{MEMBER} is {len(data)} bytes, over the limit of {MAX_BYTES}.")
    snapshot = contents.json(MEMBER, SCHEMA)
    check_storable(snapshot["state"], f"{MEMBER} at state")
    return snapshot


def _check_records(manifest: dict, client_id: uuid.UUID) -> None:
    listed = {uuid.UUID(record) for record in manifest["records"]}
    if listed != {client_id}:
        raise ArchiveError(f"manifest.records must list exactly the snapshot's id {client_id}.")
