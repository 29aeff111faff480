"""``drift_event``: one drift event with the quarantined samples flagged with it.

Members: ``event.json`` (the event: id, created and the monitor's payload), ``event/<name>`` (its
attachments), ``samples/<id>.json`` (a sample: id, created, event_id and its payload) and
``samples/<id>/<name>`` (the sample's attachments). Every record is read and checked (schema,
sample id against its path, ids against ``manifest.records``, attachments decoded) before
``drift.services`` stores any of them, so a bad member stores nothing.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from devices.ingest.archive import ArchiveError
from devices.models import PackageKind
from drift import services

KIND = PackageKind.DRIFT_EVENT
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
EVENT = "event.json"
EVENT_ATTACHMENT = re.compile(rf"event/({_NAME})")
SAMPLE = re.compile(rf"samples/({_UUID})\.json")
SAMPLE_ATTACHMENT = re.compile(rf"samples/({_UUID})/({_NAME})")
SAMPLE_MEMBERS = (SAMPLE, SAMPLE_ATTACHMENT)
MEMBERS = (re.compile(re.escape(EVENT)), EVENT_ATTACHMENT, *SAMPLE_MEMBERS)


@dataclass(frozen=True)
class Record:
    path: str
    data: dict
    attachments: services.Attachments


def handle(package, contents) -> dict:
    event = read_event(contents)
    samples = read_samples(contents)
    check_records(contents.manifest, [event, *samples])
    return {
        "events": store_events(package, [event]),
        "samples": store_samples(package, samples),
    }


def read_event(contents) -> Record:
    if EVENT not in contents.files:
        raise ArchiveError(f"A {KIND} package must hold {EVENT}.")
    paths = {match[1]: path for path in contents.files if (match := EVENT_ATTACHMENT.fullmatch(path))}
    return Record(EVENT, services.read_event(contents, EVENT), services.event_attachments(contents, paths))


def read_samples(contents) -> list[Record]:
    records, attachments = {}, defaultdict(dict)
    for path in sorted(contents.files):
        if match := SAMPLE.fullmatch(path):
            records[match[1]] = path
        elif match := SAMPLE_ATTACHMENT.fullmatch(path):
            attachments[match[1]][match[2]] = path
    for sample_id, paths in attachments.items():
        if sample_id not in records:
            raise ArchiveError(
                f"Member {min(paths.values())!r} belongs to sample {sample_id}, "
                f"but the package has no samples/{sample_id}.json."
            )
    return [_read_sample(contents, sample_id, path, attachments[sample_id]) for sample_id, path in records.items()]


def _read_sample(contents, sample_id: str, path: str, attachment_paths: dict[str, str]) -> Record:
    data = services.read_sample(contents, path)
    if uuid.UUID(data["id"]) != uuid.UUID(sample_id):
        raise ArchiveError(f"{path}: id {data['id']} is not the id in the member's path.")
    return Record(path, data, services.read_attachments(contents, attachment_paths))


def check_records(manifest: dict, records: list[Record]) -> None:
    listed = {uuid.UUID(record) for record in manifest["records"]}
    held = set()
    for record in records:
        client_id = uuid.UUID(record.data["id"])
        if client_id not in listed:
            raise ArchiveError(f"{record.path}: id {client_id} is not listed in manifest.records.")
        held.add(client_id)
    if missing := listed - held:
        raise ArchiveError(f"manifest.records lists {min(missing)}, but the package holds no such record.")


def store_events(package, records: list[Record]) -> dict:
    origin = services.Origin.of_package(package)
    results = Counter(services.store_event(origin, record.data, record.attachments) for record in records)
    return {"created": results[services.CREATED], "duplicate": results[services.DUPLICATE]}


def store_samples(package, records: list[Record]) -> dict:
    origin = services.Origin.of_package(package)
    return services.store_samples(origin, [(record.data, record.attachments) for record in records])
