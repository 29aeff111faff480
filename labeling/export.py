"""Exporting a dataset snapshot: one tar.gz in the artifacts storage, made by a Celery task.

``request_export`` marks the snapshot pending and enqueues ``labeling.export_snapshot`` after
commit. The task claims the snapshot with a conditional UPDATE (pending → running; a running one
only once it is older than the task's hard time limit, so its worker is surely gone): a second
delivery of the same message, or a second request, finds nothing to claim. A done export is
never redone. On any error the object, if any byte of it reached the storage, is deleted; a
transient one (storage or database briefly unreachable) puts the snapshot back to pending and the
task runs it again with backoff, MAX_RETRIES times; any other, or the last attempt's, marks it
failed with the reason. ``recover_exports`` (beat) queues again an export left running past the
time limit, whose worker died.

Deleting a snapshot deletes its archive, after the deletion commits (``labeling.delete_export``).

The archive, ``snapshots/<class set>/v<version>.tar.gz``::

    images/<label>/<task id>.<ext>   each item's image, copied from its storage area
    labels.csv                       task_id,label,origin,model_version,predicted_label,image
    manifest.json                    snapshot, class set, parent, content hash, counts, created,
                                     the sha256 and size of every other member, missing images

The manifest comes last because it lists the checksums of the members before it. Memory stays
constant at any size: the items are streamed from the database, each image is copied through a
small buffer, and labels.csv, the manifest's file list and the archive itself are written to
temporary files; the archive's sha256 and size are computed while it is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
import re
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote

from django.core.files import File
from django.core.files.storage import InvalidStorageError, storages
from django.db import InterfaceError, OperationalError
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from labeling.models import DatasetSnapshot, ExportStatus

logger = logging.getLogger(__name__)

AREA = "artifacts"
ARCHIVE_TYPE = "application/gzip"
FORMAT = "sphere-dataset-snapshot/1"
CSV_COLUMNS = ("task_id", "label", "origin", "model_version", "predicted_label", "image")
# The task's limits. An export still "running" after the hard limit lost its worker.
SOFT_TIME_LIMIT_S = 3 * 3600
TIME_LIMIT_S = SOFT_TIME_LIMIT_S + 300
STALE_AFTER = timedelta(seconds=TIME_LIMIT_S + 60)
ERROR_MAX_LENGTH = 2000
# Attempts after the first one for a transient error; the task waits RETRY_BACKOFF_S, then twice
# that and so on (at most RETRY_BACKOFF_MAX_S, with jitter).
MAX_RETRIES = 3
RETRY_BACKOFF_S = 30
RETRY_BACKOFF_MAX_S = 600
# S3 error codes that say "not now" rather than "never".
THROTTLED = frozenset({"SlowDown", "Throttling", "RequestTimeout", "RequestLimitExceeded"})
ITEM_CHUNK = 2000
SPOOL_BYTES = 256 * 1024
# Images are compressed formats already: a high level would cost time and save nothing.
COMPRESS_LEVEL = 1
_EXTENSION = re.compile(r"\.[a-z0-9]{1,8}")


# --- Requesting -------------------------------------------------------------------------------


def request_export(snapshot: DatasetSnapshot) -> bool:
    """Queue an export of ``snapshot`` unless it is done or running; True when queued. A pending
    one is queued again (its message may have been lost); the task runs it once."""
    stale = Q(export_status=ExportStatus.RUNNING, export_started_at__lt=timezone.now() - STALE_AFTER)
    waiting = Q(export_status__in=[ExportStatus.NONE, ExportStatus.FAILED, ExportStatus.PENDING])
    queued = DatasetSnapshot.objects.filter(waiting | stale, pk=snapshot.pk).update(
        export_status=ExportStatus.PENDING, export_error=""
    )
    if queued:
        _enqueue_on_commit(snapshot.pk)
    return bool(queued)


def _enqueue_on_commit(pk: int) -> None:
    from labeling.tasks import export_snapshot  # labeling.tasks imports this module

    export_snapshot.delay_on_commit(pk)


def archive_key(snapshot: DatasetSnapshot) -> str:
    return f"snapshots/{path_segment(snapshot.class_set.name)}/v{snapshot.version}.tar.gz"


def download_url(snapshot: DatasetSnapshot) -> str | None:
    """The operators' link to a done archive (the stored-file view checks their permission)."""
    if snapshot.export_status != ExportStatus.DONE or not snapshot.export_key:
        return None
    return reverse("stored-file", args=[AREA, snapshot.export_key])


def path_segment(name: str) -> str:
    """A label or class set name as one safe path segment: percent-encoded, so distinct names
    stay distinct and none can climb out of its folder."""
    segment = quote(name, safe=" +-_@")
    return segment.replace(".", "%2E") if segment in {"", ".", ".."} else segment


# --- Running ----------------------------------------------------------------------------------


class RetryLater(Exception):
    """A transient failure with attempts left: the task runs again later (an export is pending
    meanwhile)."""


def export_snapshot(pk: int, *, may_retry: bool = False) -> str:
    """The task's work: 'done', 'failed', or 'skipped' when there was nothing to claim. While
    ``may_retry``, a transient error raises RetryLater instead of failing the export."""
    started = timezone.now()
    if not _claim(pk, started):
        return "skipped"
    snapshot = DatasetSnapshot.objects.select_related("class_set", "parent").get(pk=pk)
    storage, name = None, None
    try:
        storage = storages[AREA]
        with tempfile.TemporaryFile() as archive:
            size, sha256 = write_archive(snapshot, archive)
            archive.seek(0)
            name = store(storage, archive_key(snapshot), archive)
        ours = _finish(pk, started, export_key=name, export_size=size, export_sha256=sha256, exported_at=timezone.now())
    except Exception as exc:
        logger.exception("Export of snapshot %s failed", pk)
        if storage is not None:
            _discard(storage, name or archive_key(snapshot))
        error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_LENGTH]
        if may_retry and is_transient(exc):
            _release(pk, started, error)
            raise RetryLater(error) from exc
        _finish(pk, started, status=ExportStatus.FAILED, export_error=error)
        return "failed"
    if not ours and not archive_in_use(snapshot.class_set_id, snapshot.version):
        _discard(storage, name)  # the snapshot was deleted while its archive was being written
        return "deleted"
    return "done"


def is_transient(exc: Exception) -> bool:
    """Worth another attempt: the storage or the database unreachable for a while, not an
    error that would come back (no permission, a bug, the time limit)."""
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, OSError | OperationalError | InterfaceError):  # ConnectionError, TimeoutError too
        return True
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is None:
        return False
    if isinstance(exc, botocore.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error.get("Code") in THROTTLED
    return isinstance(exc, botocore.BotoCoreError)  # endpoint unreachable, read timeouts, ...


def _claim(pk: int, now) -> bool:
    stale = Q(export_status=ExportStatus.RUNNING, export_started_at__lt=now - STALE_AFTER)
    claimable = DatasetSnapshot.objects.filter(Q(export_status=ExportStatus.PENDING) | stale, pk=pk)
    return claimable.update(export_status=ExportStatus.RUNNING, export_started_at=now, export_error="") == 1


def _finish(pk: int, started, status=ExportStatus.DONE, **fields) -> bool:
    """Mark this run's outcome; False when the export is no longer this run's (taken over after
    going stale, or the snapshot deleted)."""
    if status != ExportStatus.DONE:
        fields |= {"export_key": "", "export_size": None, "export_sha256": "", "exported_at": None}
    mine = DatasetSnapshot.objects.filter(pk=pk, export_status=ExportStatus.RUNNING, export_started_at=started)
    return mine.update(export_status=status, **fields) == 1


def _release(pk: int, started, error: str) -> None:
    # Pending again, so the retry (or anybody's request meanwhile) can claim it.
    _finish(pk, started, status=ExportStatus.PENDING, export_error=f"{error} (retrying)"[:ERROR_MAX_LENGTH])


def recover_exports(now=None, batch: int = 100) -> int:
    """Queue again the exports left running past STALE_AFTER (their worker died): the beat's
    labeling.recover_snapshot_work. Return how many."""
    now = now or timezone.now()
    stale = DatasetSnapshot.objects.filter(export_status=ExportStatus.RUNNING, export_started_at__lt=now - STALE_AFTER)
    return sum(request_export(snapshot) for snapshot in stale.only("pk").order_by("export_started_at")[:batch])


# --- Deleting ---------------------------------------------------------------------------------


def delete_archive_on_commit(sender, instance: DatasetSnapshot, **kwargs) -> None:
    """A post_delete receiver (labeling.apps): delete the archive once the deletion commits."""
    snapshot = instance
    if snapshot.export_key:
        from labeling.tasks import delete_export  # labeling.tasks imports this module

        delete_export.delay_on_commit(snapshot.export_key, snapshot.class_set_id, snapshot.version)


def delete_archive(key: str, class_set_id: int, version: int, *, may_retry: bool = False) -> bool:
    """The labeling.delete_export task: delete the archive ``key`` of a deleted snapshot, unless
    a newer snapshot took the same version (its archive has the same name). While ``may_retry``,
    a transient storage error raises RetryLater; otherwise an error is logged and the archive
    stays (False)."""
    if archive_in_use(class_set_id, version) or DatasetSnapshot.objects.filter(export_key=key).exists():
        return False
    try:
        storages[AREA].delete(key)  # deleting a missing name is no error: safe to run twice
    except Exception as exc:
        if may_retry and is_transient(exc):
            raise RetryLater(f"{type(exc).__name__}: {exc}") from exc
        logger.exception("Could not delete the archive %s of a deleted snapshot", key)
        return False
    return True


def archive_in_use(class_set_id: int, version: int) -> bool:
    # Archive names are <class set>/v<version>: deleting the latest snapshot frees its version.
    return DatasetSnapshot.objects.filter(class_set_id=class_set_id, version=version).exists()


def store(storage, key: str, archive) -> str:
    """Save the archive under ``key``; return the name the storage used."""
    # An S3 storage has imported its module already; a worker on local folders never loads boto3.
    s3 = sys.modules.get("storages.backends.s3")
    if s3 is not None and isinstance(storage, s3.S3Storage):
        # django-storages would guess "Content-Encoding: gzip" from ".tar.gz", and browsers and
        # HTTP clients would then unpack the download behind the operator's back (and the sha256
        # would not match): store it as what it is, a gzip file, with no content encoding.
        obj = storage.bucket.Object(storage._normalize_name(key))
        extra = {"ContentType": ARCHIVE_TYPE, **({"ACL": storage.default_acl} if storage.default_acl else {})}
        obj.upload_fileobj(archive, ExtraArgs=extra, Config=storage.transfer_config)
        return key
    return storage.save(key, File(archive))


def _discard(storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:  # the export's own error is the one to report
        logger.warning("Could not delete the partial export %s", name, exc_info=True)


# --- The archive ------------------------------------------------------------------------------


class _Digesting:
    """A write-only file that forwards to ``target`` and keeps the sha256 and size of the bytes."""

    def __init__(self, target):
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class _HashingReader:
    def __init__(self, source):
        self.source, self.sha256, self.size = source, hashlib.sha256(), 0

    def read(self, n=-1) -> bytes:
        data = self.source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


@dataclass
class _Members:
    """Side files written while the images stream into the archive."""

    labels: io.TextIOWrapper
    files: tempfile.SpooledTemporaryFile
    missing: tempfile.SpooledTemporaryFile
    counts: dict = field(default_factory=lambda: {"images": 0, "missing_images": 0, "without_image": 0})

    @classmethod
    def open(cls) -> _Members:
        labels = io.TextIOWrapper(tempfile.TemporaryFile(), encoding="utf-8", newline="")
        return cls(labels, tempfile.SpooledTemporaryFile(SPOOL_BYTES), tempfile.SpooledTemporaryFile(SPOOL_BYTES))

    def close(self) -> None:
        for handle in (self.labels, self.files, self.missing):
            handle.close()


def write_archive(snapshot: DatasetSnapshot, out) -> tuple[int, str]:
    """Write the tar.gz of ``snapshot`` to the binary file ``out``; return its size and sha256."""
    digesting = _Digesting(out)
    members = _Members.open()
    mtime = int(snapshot.created.timestamp())
    try:
        tar = tarfile.open(fileobj=digesting, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=COMPRESS_LEVEL)
        with tar:
            writer = csv.writer(members.labels, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for item in _items(snapshot):
                path = _add_image(tar, item, members, mtime)
                writer.writerow([item[0], item[1], item[2], item[5], item[6], path])
            members.labels.flush()
            _add_file(tar, "labels.csv", members.labels.buffer, mtime, members)
            with tempfile.TemporaryFile() as manifest:
                _write_manifest(manifest, snapshot, members)
                _add_file(tar, "manifest.json", manifest, mtime, None)
    finally:
        members.close()
    return digesting.size, digesting.sha256.hexdigest()


def _items(snapshot: DatasetSnapshot):
    fields = ("task_id", "label", "origin", "image_area", "image_key", "model_version", "predicted_label")
    return snapshot.items.order_by("task_id").values_list(*fields).iterator(chunk_size=ITEM_CHUNK)


def _add_image(tar: tarfile.TarFile, item: tuple, members: _Members, mtime: int) -> str:
    task_id, label, _, area, key = item[:5]
    if not key:
        members.counts["without_image"] += 1
        return ""
    try:
        handle = storages[area].open(key, "rb")
    except (FileNotFoundError, InvalidStorageError) as exc:
        members.counts["missing_images"] += 1
        missing = {"task_id": task_id, "image_area": area, "image_key": key, "reason": type(exc).__name__}
        members.missing.write(json.dumps(missing).encode() + b"\n")
        return ""
    path = f"images/{path_segment(label)}/{task_id}{_extension(key)}"
    with handle:
        reader = _HashingReader(handle)
        _append(tar, _info(path, handle.size, mtime), reader)
    members.counts["images"] += 1
    _list_file(members, path, reader.size, reader.sha256.hexdigest())
    return path


def _append(tar: tarfile.TarFile, info: tarfile.TarInfo, reader) -> None:
    tar.addfile(info, reader)
    # tarfile keeps every member it wrote (for getmembers()): at 100,000 images that list would
    # be the one thing growing with the snapshot.
    tar.members.clear()


def _extension(key: str) -> str:
    # Not pathlib: it interns every part of every path, and the interned table keeps its size.
    suffix = posixpath.splitext(key)[1].lower()
    return suffix if _EXTENSION.fullmatch(suffix) else ".bin"


def _info(path: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def _add_file(tar: tarfile.TarFile, path: str, handle, mtime: int, members: _Members | None) -> None:
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    reader = _HashingReader(handle)
    _append(tar, _info(path, size, mtime), reader)
    if members is not None:
        _list_file(members, path, size, reader.sha256.hexdigest())


def _list_file(members: _Members, path: str, size: int, sha256: str) -> None:
    members.files.write(json.dumps({"path": path, "size": size, "sha256": sha256}).encode() + b"\n")


def _write_manifest(out, snapshot: DatasetSnapshot, members: _Members) -> None:
    """The manifest's head, then its two lists streamed from their side files."""
    head = json.dumps(_manifest_head(snapshot, members.counts), ensure_ascii=False)
    out.write(head[:-1].encode())
    for name, lines in (("files", members.files), ("missing", members.missing)):
        out.write(f', "{name}": ['.encode())
        lines.seek(0)
        for n, line in enumerate(lines):
            out.write((b", " if n else b"") + line.rstrip(b"\n"))
        out.write(b"]")
    out.write(b"}")


def _manifest_head(snapshot: DatasetSnapshot, counts: dict) -> dict:
    class_set, parent = snapshot.class_set, snapshot.parent
    return {
        "format": FORMAT,
        "snapshot": {"id": snapshot.pk, "version": snapshot.version, "note": snapshot.note},
        "class_set": {"name": class_set.name, "classes": class_set.classes},
        "parent": None if parent is None else {"id": parent.pk, "version": parent.version},
        "content_hash": snapshot.content_hash,
        "counts": {"items": snapshot.item_count, "classes": snapshot.class_counts, **counts},
        "created": snapshot.created.isoformat(),
        "exported": timezone.now().isoformat(),
    }
