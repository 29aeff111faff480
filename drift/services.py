"""Storing the drift events and quarantined samples devices send in packages
(``drift.package_kinds``).

A record can arrive in two packages, so each is stored once per (device, client id); the second
time is a no-op, reported as a duplicate. A sample names its event by ``event_id``: the link is
made when the sample is stored if the event is already there, or else when the event arrives.
Both rely on one device's writes taking turns (``devices.ingest.processing`` holds a per-device
lock while a handler runs): otherwise a sample and its event stored at once by two workers would
each miss the other's uncommitted row, and stay unlinked.

Attachments are checked and decoded by ``read_attachments`` before anything is stored, so a bad
one fails its package without leaving files behind:

- ``image.png|jpg|jpeg|webp``: decoded in full under the pixel limit; stored as sent (image_key);
- ``image.npy``: an H×W or H×W×C (C = 1, 3, 4) numeric array, as the edge client sends its
  float32 input image; rendered min-max scaled to an 8-bit PNG and stored as ``image.png``;
- ``features.npy``: 1 to MAX_FEATURES finite values, kept as float32 little-endian bytes;
- any other name: stored as sent and listed in ``attachments`` as {name, key, size, sha256}.

Files go to the drift-images storage under ``<device id>/<record id>.<name>``. DriftEvent has no
image or feature columns, so an event's attachments are all stored as sent and listed in its
payload under ``_attachments``.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import transaction
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from devices.ingest.archive import ArchiveError, check_storable, parse_time
from devices.ingest.kinds import store_files
from drift import verdicts
from drift.models import DriftEvent, DriftSample
from sphere import live

CREATED, DUPLICATE = "created", "duplicate"
MAX_FEATURES = 4096
IMAGE_FORMATS = {"image.png": "PNG", "image.jpg": "JPEG", "image.jpeg": "JPEG", "image.webp": "WEBP"}
IMAGE_ARRAY, FEATURES, RENDERED_IMAGE = "image.npy", "features.npy", "image.png"

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_MODEL_VERSION = {"type": "string", "maxLength": 80}
# Keys beyond these are the monitor's payload, kept as sent.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "created"],
    "properties": {
        "id": _UUID,
        "created": _TIME,
        "detector": {"type": "string", "maxLength": 64},
        "monitor": {"type": "string", "maxLength": 64},
        "model_version": _MODEL_VERSION,
    },
}
SAMPLE_SCHEMA = {
    "type": "object",
    "required": ["id", "created", "event_id"],
    "properties": {
        "id": _UUID,
        "created": _TIME,
        "event_id": {"type": ["string", "null"], "format": "uuid"},
        "label": {"type": "string", "maxLength": 100},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "model_version": _MODEL_VERSION,
        "neighbour_distance": {"type": "number", "minimum": 0},
        "reasons": {"type": "array", "items": {"type": "string", "maxLength": 64}},
    },
}


@dataclass(frozen=True)
class Attachments:
    """A record's attachments, checked and decoded but not stored yet."""

    image: tuple[str, bytes] | None = None  # (file name, encoded image)
    features: bytes | None = None  # float32 little-endian
    files: dict[str, bytes] = field(default_factory=dict)  # everything else, as sent


# --- Reading (no side effects) ----------------------------------------------------------------


def read_event(contents, path: str) -> dict:
    return _read_record(contents, path, EVENT_SCHEMA)


def read_sample(contents, path: str) -> dict:
    return _read_record(contents, path, SAMPLE_SCHEMA)


def _read_record(contents, path: str, schema: dict) -> dict:
    record = contents.json(path, schema)
    check_storable(record, path)
    parse_time(record["created"], f"{path} at created")  # fails here, before anything of the package is stored
    return record


def read_attachments(contents, paths: dict[str, str]) -> Attachments:
    """A sample's attachments, given as {name: member path}."""
    images = sorted(path for name, path in paths.items() if name in IMAGE_FORMATS or name == IMAGE_ARRAY)
    if len(images) > 1:
        raise ArchiveError(f"A record holds one image at most, not {' and '.join(map(repr, images))}.")
    image, features, files = None, None, {}
    for name, path in paths.items():
        if name in IMAGE_FORMATS:
            image = (name, _image(contents, path, IMAGE_FORMATS[name]))
        elif name == IMAGE_ARRAY:
            image = (RENDERED_IMAGE, render_png(contents.npy(path), path))
        elif name == FEATURES:
            features = feature_bytes(contents.npy(path), path)
        else:
            files[name] = contents.files[path]
    return Attachments(image, features, files)


def event_attachments(contents, paths: dict[str, str]) -> Attachments:
    return Attachments(files={name: contents.files[path] for name, path in paths.items()})


def _image(contents, path: str, expected: str) -> bytes:
    image = contents.image(path)
    if image.format != expected:
        raise ArchiveError(f"Image {path!r} is a {image.format} file, not {expected} as its name says.")
    return image.data


RAW_RANGE_TEXT = "sphere:raw_range"


def render_png(array: np.ndarray, path: str) -> bytes:
    """An image array as an 8-bit PNG, min-max scaled over all its values (a flat one is black)
    so an operator sees it well; the range it was scaled from goes into the ``sphere:raw_range``
    text chunk ("low high"), so training can map the pixels back to what the device saw (a
    brightness shift survives the stretch)."""
    values = _image_values(array, path)
    low, high = values.min(), values.max()
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    info = PngInfo()
    info.add_text(RAW_RANGE_TEXT, f"{float(low)!r} {float(high if high > low else low + 1.0)!r}")
    buffer = io.BytesIO()
    Image.fromarray(np.rint(scaled).astype(np.uint8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _image_values(array: np.ndarray, path: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, 0] if array.shape[2] == 1 else array
    elif array.ndim != 2:
        raise ArchiveError(f"{path} must be an H×W or H×W×C image (C = 1, 3 or 4), not of shape {array.shape}.")
    height, width = array.shape[:2]
    if height * width > settings.PACKAGE_MAX_IMAGE_PIXELS:
        raise ArchiveError(
            f"Image {path!r} is {width}×{height} pixels, over the limit of {settings.PACKAGE_MAX_IMAGE_PIXELS}."
        )
    if height * width == 0:
        raise ArchiveError(f"Image {path!r} has no pixels.")
    # Through float32, as the device computes it: the float64 span below then cannot overflow.
    return _float32(array, path).astype(np.float64)


def feature_bytes(array: np.ndarray, path: str) -> bytes:
    if array.ndim != 1 or not 1 <= array.size <= MAX_FEATURES:
        raise ArchiveError(f"{path} must be a 1-D array of 1 to {MAX_FEATURES} values, not of shape {array.shape}.")
    return _float32(array, path).tobytes()


def _float32(array: np.ndarray, path: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # out of float32 range becomes infinite, refused just below
        values = array.astype("<f4")
    if not np.isfinite(values).all():
        raise ArchiveError(f"{path} holds NaN, infinite or out-of-float32-range values.")
    return values


# --- Storing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where records come from: a device, through a package or a direct API call."""

    device_id: uuid.UUID
    package: object | None = None  # devices.models.Package

    @classmethod
    def of_package(cls, package) -> Origin:
        return cls(package.device_id, package)


@transaction.atomic(savepoint=False)  # the event and the links to it commit together
def store_event(origin: Origin, record: dict, attachments: Attachments) -> str:
    """Store a drift event once per (device, id) and link the samples that arrived before it."""
    device_id, client_id = origin.device_id, uuid.UUID(record["id"])
    if DriftEvent.objects.filter(device_id=device_id, client_id=client_id).exists():
        return DUPLICATE
    pending: dict[str, bytes] = {}
    files = _listed_files(device_id, client_id, attachments.files, pending)
    store_files("drift_images", pending)
    event = DriftEvent.objects.create(
        device_id=device_id,
        client_id=client_id,
        created=parse_time(record["created"], "created"),
        detector=record.get("detector") or record.get("monitor", ""),
        model_version=record.get("model_version", ""),
        payload={**record, "_attachments": files} if files else record,
        package=origin.package,
    )
    DriftSample.objects.filter(device_id=device_id, event_client_id=client_id, event=None).update(event=event)
    # Here, not in the callers: packages and the direct API both store through this function, and
    # only a new row is news (a replay returned DUPLICATE above). Sent after commit, by then
    # the samples of the same package are stored too.
    live.publish(verdicts.DRIFT_TOPIC, "drift.event", verdicts.event_summary(event))
    return CREATED


def store_samples(origin: Origin, records: list[tuple[dict, Attachments]]) -> dict[str, int]:
    """Store quarantined samples once per (device, id), linked to their events if those are here.
    A constant number of queries whatever the count: one for the stored ids, one for the events,
    one insert (a package of 20 samples must cost milliseconds)."""
    device_id = origin.device_id
    ids = [uuid.UUID(record["id"]) for record, _ in records]
    stored = set(DriftSample.objects.filter(device_id=device_id, client_id__in=ids).values_list("client_id", flat=True))
    fresh = [
        (client_id, record, files)
        for client_id, (record, files) in zip(ids, records, strict=True)
        if client_id not in stored
    ]
    events = _events(device_id, {record["event_id"] for _, record, _ in fresh if record["event_id"]})
    files: dict[str, bytes] = {}
    samples = [_sample(origin, *item, events, files) for item in fresh]
    store_files("drift_images", files)
    DriftSample.objects.bulk_create(samples)
    return {CREATED: len(fresh), DUPLICATE: len(records) - len(fresh)}


def _sample(origin: Origin, client_id, record: dict, attachments: Attachments, events: dict, files: dict):
    """The row of a new sample; its files are added to ``files`` ({key: bytes}) to be written."""
    device_id = origin.device_id
    event_client_id = uuid.UUID(record["event_id"]) if record["event_id"] else None
    return DriftSample(
        device_id=device_id,
        client_id=client_id,
        event_id=events.get(event_client_id),
        event_client_id=event_client_id,
        created=parse_time(record["created"], "created"),
        model_version=record.get("model_version", ""),
        label=record.get("label", ""),
        confidence=record.get("confidence"),
        payload=record,
        features=attachments.features,
        image_key=_image_key(device_id, client_id, attachments.image, files),
        attachments=_listed_files(device_id, client_id, attachments.files, files),
        package=origin.package,
    )


def _events(device_id, event_ids: set[str]) -> dict[uuid.UUID, int]:
    if not event_ids:
        return {}
    found = DriftEvent.objects.filter(device_id=device_id, client_id__in=[uuid.UUID(i) for i in event_ids])
    return dict(found.values_list("client_id", "id"))


def _image_key(device_id, client_id: uuid.UUID, image: tuple[str, bytes] | None, files: dict) -> str:
    if image is None:
        return ""
    name, data = image
    key = _key(device_id, client_id, name)
    files[key] = data
    return key


def _listed_files(device_id, client_id: uuid.UUID, attached: dict[str, bytes], files: dict) -> list[dict]:
    listed = []
    for name, data in sorted(attached.items()):
        key = _key(device_id, client_id, name)
        files[key] = data
        listed.append({"name": name, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return listed


def _key(device_id, client_id: uuid.UUID, name: str) -> str:
    # One folder per device, not per record: creating a folder per sample cost more than
    # writing its image on a local disk.
    return f"{device_id}/{client_id}.{name}"
