"""Receiving a package: stream the body into the packages storage while hashing and counting
it, then record the Package row and queue its processing once the row is committed.

The object is written under a fresh name before the row exists, so a failed or racing upload
only ever removes its own object; the row, once committed, always points at a whole archive
whose sha256 was checked.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import storages
from django.db import IntegrityError, transaction

from devices.models import Device, Package, PackageKind

GZIP_TYPES = {"application/gzip", "application/x-gzip"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    package_id: uuid.UUID
    kind: str
    sha256: str


@dataclass
class Received:
    package: Package
    created: bool


def check_headers(*, package_id: str | None, kind: str | None, sha256: str | None, content_type: str) -> Upload:
    # A media type is case-insensitive and may carry parameters ("application/gzip; charset=binary").
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in GZIP_TYPES:
        raise UploadError(415, f"Content-Type must be application/gzip, not {content_type or 'missing'!r}.")
    try:
        parsed_id = uuid.UUID(package_id or "")
    except ValueError:
        raise UploadError(400, "X-Package-Id must be the package's UUID.") from None
    if kind not in PackageKind.values:
        raise UploadError(400, f"X-Package-Kind must be one of {', '.join(PackageKind.values)}.")
    # Lowercased before the replay check compares it with the stored one; fullmatch, because
    # '$' would also accept a trailing newline.
    sha256 = (sha256 or "").lower()
    if not _SHA256.fullmatch(sha256):
        raise UploadError(400, "X-Package-Sha256 must be the body's sha256 as 64 hex digits.")
    return Upload(parsed_id, kind, sha256)


def receive_package(device: Device, upload: Upload, body) -> Received:
    """Store the archive read from ``body`` and record it; a replay stores nothing."""
    known = _known(device, upload)
    if known:
        return Received(known, created=False)
    storage, reader = storages["packages"], HashingReader(body, settings.PACKAGE_MAX_BYTES)
    name = _save(storage, f"{device.pk}/{upload.package_id}/{uuid.uuid4().hex}.package", reader)
    try:
        if reader.hexdigest() != upload.sha256:
            raise UploadError(400, f"The body's sha256 is {reader.hexdigest()}, not X-Package-Sha256 {upload.sha256}.")
        return _record(device, upload, name, reader.size)
    except BaseException:
        storage.delete(name)
        raise


def _save(storage, name: str, reader: HashingReader) -> str:
    """Stream ``reader`` into ``storage``. A stream that stops half-way (over the limit, client
    gone) leaves a partial file behind in FileSystemStorage: remove it, as nothing points at it."""
    try:
        return storage.save(name, File(reader))
    except BaseException:
        storage.delete(name)  # the name is fresh (uuid4), so it can only be this upload's
        raise


def _known(device: Device, upload: Upload) -> Package | None:
    package = Package.objects.filter(device=device, package_id=upload.package_id).first()
    if package and package.sha256 != upload.sha256:
        raise UploadError(409, f"Package {upload.package_id} was already received with another sha256.")
    return package


def _record(device: Device, upload: Upload, name: str, size: int) -> Received:
    from devices.tasks import process_package

    try:
        with transaction.atomic():
            package = Package.objects.create(
                device=device,
                package_id=upload.package_id,
                kind=upload.kind,
                sha256=upload.sha256,
                size=size,
                storage_key=name,
            )
            process_package.delay_on_commit(package.pk)
    except IntegrityError:  # the same package uploaded twice at once, and the other one won
        storages["packages"].delete(name)
        return Received(_known(device, upload), created=False)
    return Received(package, created=True)


class HashingReader(io.RawIOBase):
    """A read-only, non-seekable stream over the request body that hashes and counts what
    passes through and stops the upload as soon as it passes ``limit`` bytes."""

    def __init__(self, body, limit: int):
        self.body, self.limit, self.size, self._sha256 = body, limit, 0, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.body.read(len(buffer))
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadError(413, f"The package exceeds the limit of {self.limit} bytes.")
        self._sha256.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()
