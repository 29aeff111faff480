"""Processing a stored package: claim it, read it safely, hand it to its kind's handler.

Safe to run twice and to race: a package is claimed by one conditional UPDATE, its handler
writes inside the transaction that marks it processed (after checking the claim is still its
own, and waiting for the device's other packages there), and handlers are idempotent per
record. A worker killed mid-way leaves the package ``processing`` with its claim; the
redelivered task (same task id, late ack) takes it over at once, anyone else only after
PACKAGE_CLAIM_TIMEOUT_S (``recover_packages``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import storages
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from devices.ingest import kinds
from devices.ingest.archive import ArchiveError, PackageContents, read_package
from devices.models import Package, PackageStatus
from sphere import live

log = logging.getLogger(__name__)
PACKAGES_TOPIC = "packages"
# First key of the PostgreSQL advisory lock that makes one device's packages take turns (the
# second is the device id's hash).
_DEVICE_PACKAGES_LOCK = 0x9AC4A6

# Errors that may pass (storage or database briefly unreachable): the task retries them with
# backoff. An archive that can never be processed raises ArchiveError and fails at once.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OSError, OperationalError, InterfaceError)
try:
    from botocore.exceptions import BotoCoreError, ClientError

    TRANSIENT_ERRORS += (BotoCoreError, ClientError)
except ImportError:  # pragma: no cover - boto3 is a server requirement
    pass


def process_package(pk: int, token: str) -> str:
    """Process package ``pk`` as claim holder ``token``; return what happened to it."""
    package = claim(pk, token)
    if package is None:
        return "skipped"
    try:
        contents = read_package_file(package)
        handler = kinds.handler_for(package.kind)
        check_manifest(package, contents, handler)
        return _store(package, token, handler, contents)
    except ArchiveError as exc:
        return fail(package, token, str(exc))
    except TRANSIENT_ERRORS:
        raise  # the task retries these
    except Exception as exc:
        # A bug or content no check foresaw (a time limit counts too): left "processing", the
        # package would be requeued forever. Failed, it shows its reason and can be reprocessed
        # once fixed.
        log.exception("package %s (%s) could not be processed", package.package_id, package.kind)
        return fail(package, token, f"Internal error while processing: {type(exc).__name__}: {exc}")


def claim(pk: int, token: str) -> Package | None:
    now = timezone.now()
    stale = now - timedelta(seconds=settings.PACKAGE_CLAIM_TIMEOUT_S)
    claimable = Q(status=PackageStatus.RECEIVED) | Q(
        Q(claim_token=token) | Q(processing_started_at__lt=stale), status=PackageStatus.PROCESSING
    )
    with transaction.atomic():
        _commit_without_waiting_for_disk()
        claimed = Package.objects.filter(claimable, pk=pk).update(
            status=PackageStatus.PROCESSING,
            claim_token=token,
            attempts=F("attempts") + 1,
            processing_started_at=now,
            processed_at=None,
            error="",
        )
    return Package.objects.select_related("device").get(pk=pk) if claimed else None


def read_package_file(package: Package) -> PackageContents:
    with storages["packages"].open(package.storage_key, "rb") as archive:
        return read_package(archive)


def check_manifest(package: Package, contents: PackageContents, handler) -> None:
    manifest = contents.manifest
    if manifest["kind"] != package.kind:
        raise ArchiveError(
            f"The manifest says kind {manifest['kind']!r}, but the package was uploaded as {package.kind!r}."
        )
    if uuid.UUID(manifest["id"]) != package.package_id:
        raise ArchiveError(f"The manifest id {manifest['id']} is not the uploaded package id {package.package_id}.")
    if uuid.UUID(manifest["device"]) != package.device_id:
        raise ArchiveError(f"The manifest names device {manifest['device']}, not the uploading device.")
    kinds.check_members(handler, contents.files)


def _store(package: Package, token: str, handler, contents: PackageContents) -> str:
    with transaction.atomic():
        _take_turn_without_waiting_for_disk(package.device_id)
        if not _still_ours(package.pk, token):
            return "skipped"
        summary = handler.handle(package, contents)
        _finish(package, PackageStatus.PROCESSED, summary=summary)
    return PackageStatus.PROCESSED


def fail(package: Package, token: str, reason: str) -> str:
    with transaction.atomic():
        _commit_without_waiting_for_disk()
        if not _still_ours(package.pk, token):
            return "skipped"
        _finish(package, PackageStatus.FAILED, error=reason)
    log.warning("package %s (%s) failed: %s", package.package_id, package.kind, reason)
    return PackageStatus.FAILED


def give_up(pk: int, token: str, exc: Exception, *, attempts: int) -> str:
    package = Package.objects.get(pk=pk)
    return fail(package, token, f"Gave up after {attempts} attempts: {type(exc).__name__}: {exc}")


def _still_ours(pk: int, token: str) -> bool:
    # Locks the row until commit: a worker that took the package over in between (stale claim)
    # cannot mark it too, and whoever commits second sees it no longer processing.
    current = Package.objects.select_for_update().filter(pk=pk).values_list("status", "claim_token").first()
    return current == (PackageStatus.PROCESSING, token)


def _commit_without_waiting_for_disk() -> None:
    # Everything processing writes can be rebuilt from the archive, which is durable in storage
    # with its row since the upload. So its transactions need not wait for the WAL flush (an
    # fsync per package on a slow disk): a crash may lose the last ~0.2 s of them, and those
    # packages go back to received/processing, from where recover_packages runs them again.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def _take_turn_without_waiting_for_disk(device_id) -> None:
    """The handler's transaction: relaxed commit as above, and this device's packages take turns.

    A device's packages may repeat records (it re-sends what it never saw acknowledged), and
    handlers look up which records are new before inserting them. Two of its packages handled at
    once would each miss the other's uncommitted rows: the duplicate insert is skipped, but both
    summaries count the shared records as stored. The advisory lock is held until commit, so the
    next handler's lookup sees them. SQLite has a single writer already. One round trip for both.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(%s, hashtext(%s))",
                [_DEVICE_PACKAGES_LOCK, str(device_id)],
            )


def _finish(package: Package, status: str, *, summary: dict | None = None, error: str = "") -> None:
    package.status, package.error, package.processed_at = status, error, timezone.now()
    package.summary = summary or {}
    package.claim_token = ""
    package.save(update_fields=["status", "error", "processed_at", "summary", "claim_token"])
    publish(package)


def publish(package: Package) -> None:
    live.publish(PACKAGES_TOPIC, f"package.{package.status}", package_event(package))


def package_event(package: Package) -> dict:
    return {
        "id": package.pk,
        "package_id": str(package.package_id),
        "device": str(package.device_id),
        "kind": package.kind,
        "status": package.status,
        "error": package.error,
        "summary": package.summary,
        "processing_ms": package.processing_ms,
        "processed_at": package.processed_at,
    }


# --- Operators and recovery -------------------------------------------------------------------


def reprocess(queryset) -> int:
    """Queue packages again (failed ones, or processed ones to re-run their handler)."""
    from devices.tasks import process_package

    with transaction.atomic():
        ids = list(
            queryset.filter(status__in=[PackageStatus.FAILED, PackageStatus.PROCESSED]).values_list("pk", flat=True)
        )
        Package.objects.filter(pk__in=ids).update(status=PackageStatus.RECEIVED, error="", claim_token="")
        for pk in ids:
            process_package.delay_on_commit(pk)
    return len(ids)


def recover_packages(now=None, batch: int = 500) -> int:
    """Queue again packages whose task was lost: received long ago (the broker was down when
    it was committed), or held past the claim timeout (the worker died for good)."""
    from devices.tasks import process_package

    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.PACKAGE_CLAIM_TIMEOUT_S)
    lost = Package.objects.filter(
        Q(status=PackageStatus.RECEIVED, received_at__lt=stale)
        | Q(status=PackageStatus.PROCESSING, processing_started_at__lt=stale)
    ).values_list("pk", flat=True)[:batch]
    ids = list(lost)
    for pk in ids:
        process_package.delay(pk)
    return len(ids)
