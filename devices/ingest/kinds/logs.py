"""``logs``: chunks of a device's own log file. Each record (its id in ``manifest.records``) is
two members:

- ``logs/<id>.json``, its metadata: ``{"id": <id>, "created": <date-time>, "name": <file name on
  the device, 1-64 characters, no control characters>}`` (other keys are ignored);
- ``logs/<id>.log`` or ``logs/<id>.jsonl``, the text itself: UTF-8, plain or JSON lines alike
  (the lines are counted, not parsed).

The text goes to the oplogs storage under ``<device id>/<id>.log``; rows are unique on
(device, id), so a chunk that arrives again is skipped, file and row.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from devices.ingest.archive import ArchiveError, parse_time
from devices.ingest.kinds import store_file
from devices.models import OperationalLog, PackageKind

KIND = PackageKind.LOGS
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MEMBER = re.compile(rf"logs/({_UUID})\.(json|log|jsonl)")
MEMBERS = (MEMBER,)
TEXT_EXTENSIONS = ("log", "jsonl")

SCHEMA = {
    "type": "object",
    "required": ["id", "created", "name"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "created": {"type": "string", "format": "date-time"},
        "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[^\x00-\x1f\x7f]*$"},
    },
}


@dataclass(frozen=True)
class LogChunk:
    client_id: uuid.UUID
    created: datetime
    name: str
    text: bytes


def handle(package, contents) -> dict:
    members = _members_by_record(contents.files)
    _check_records(contents.manifest, members)
    chunks = [_read(contents, client_id, paths) for client_id, paths in members.items()]
    stored = OperationalLog.objects.filter(device=package.device_id, client_id__in=list(members))
    known = set(stored.values_list("client_id", flat=True))
    fresh = [_store(package, chunk) for chunk in chunks if chunk.client_id not in known]
    OperationalLog.objects.bulk_create(fresh, ignore_conflicts=True)
    return {"logs": len(chunks), "stored": len(fresh)}


def _members_by_record(files) -> dict[uuid.UUID, dict[str, str]]:
    members: dict[uuid.UUID, dict[str, str]] = defaultdict(dict)
    for path in sorted(files):
        record, extension = MEMBER.fullmatch(path).groups()
        members[uuid.UUID(record)][extension] = path
    return members


def _check_records(manifest: dict, members: dict[uuid.UUID, dict[str, str]]) -> None:
    listed = {uuid.UUID(record) for record in manifest["records"]}
    for client_id, paths in members.items():
        if client_id not in listed:
            first = next(iter(paths.values()))
            raise ArchiveError(f"Member {first!r} is for log {client_id}, which manifest.records does not list.")
    if missing := listed - members.keys():
        raise ArchiveError(f"manifest.records lists log {min(missing)}, but the package has no such log.")


def _read(contents, client_id: uuid.UUID, paths: dict[str, str]) -> LogChunk:
    texts = [paths[extension] for extension in TEXT_EXTENSIONS if extension in paths]
    if "json" not in paths:
        raise ArchiveError(f"Member {texts[0]!r} has no metadata: logs/{client_id}.json is missing.")
    if len(texts) != 1:
        raise ArchiveError(f"Log {client_id} needs one text member (logs/{client_id}.log or .jsonl), not {len(texts)}.")
    meta = contents.json(paths["json"], SCHEMA)
    if uuid.UUID(meta["id"]) != client_id:
        raise ArchiveError(f"{paths['json']}: id {meta['id']} is not the id in the member's path.")
    text = contents.files[texts[0]]
    _check_utf8(text, texts[0])
    return LogChunk(client_id, parse_time(meta["created"], f"{paths['json']} at created"), meta["name"], text)


def _check_utf8(data: bytes, path: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"Member {path!r} is not UTF-8 text: {exc.reason} at byte {exc.start}.") from None


def _store(package, chunk: LogChunk) -> OperationalLog:
    return OperationalLog(
        device_id=package.device_id,
        client_id=chunk.client_id,
        created=chunk.created,
        name=chunk.name,
        storage_key=_save(f"{package.device_id}/{chunk.client_id}.log", chunk.text),
        size=len(chunk.text),
        lines=_count_lines(chunk.text),
        package=package,
    )


def _count_lines(text: bytes) -> int:
    # A last line without its newline still counts.
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


def _save(name: str, data: bytes) -> str:
    return store_file("oplogs", name, data)
