"""Dataset snapshots: the labels of a class set that count, frozen into a versioned set of items.

- **What counts.** A task's item is its latest *counting* label: not undone and not rejected
  (with the class set's ``review_required``, accepted only). Gold tasks measure labelers and are
  left out. A folded near-duplicate (``duplicate_of``) of a labeled task is an item of its own
  (its own image and features) with its representative's label, unless it has a counting label
  of its own (device feedback), which wins.
- **Versions.** Each class set numbers its snapshots 1, 2, 3 …; the parent defaults to the
  latest one, so the chain records what each dataset grew from.
- **Content hash.** sha256 over a format line and one canonical line per item in task order
  (task id, label, origin, image area and key, sha256 of the feature bytes, model version,
  predicted label): the same items give the same hash whatever the database's order or the time.
- **Identical content.** A snapshot whose items equal the latest one's is still created (a new
  version with its own note and author: "retrained on the same data" is worth recording), and
  says so: ``same_content_as_parent`` is true, and the admin and the API show it.
- **Immutable.** The items are written once, in the creating transaction, in batches from one
  streamed query (constant memory at any size); the snapshot is then sealed by its hash and the
  models refuse any other change (``FrozenSnapshotError``) but the export fields.
- **In the background.** ``create_snapshot`` is synchronous (a training job calls it inside its
  worker). Operators ask with ``request_snapshot``: a ``SnapshotRequest`` row, built after
  commit by the ``labeling.create_snapshot`` task (``build_requested``), which locks the row,
  builds, and marks it done in one transaction: two deliveries of the message make one snapshot,
  and a worker that dies mid-way leaves the request pending for the next delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from datetime import timedelta

from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Case, CharField, OuterRef, Q, Subquery, Value, When
from django.utils import timezone

from devices.models import PredictionImage
from labeling.models import (
    ClassSet,
    DatasetSnapshot,
    Label,
    LabelTask,
    ReviewStatus,
    SnapshotItem,
    SnapshotRequest,
    SnapshotRequestStatus,
)

log = logging.getLogger(__name__)

READ_CHUNK = 1000
# Rows per INSERT: psycopg holds a whole statement's parameters at once.
INSERT_BATCH = 500
HASH_FORMAT = b"sphere-snapshot-items/1\n"
PREDICTION_IMAGES = "prediction_images"
ERROR_MAX_LENGTH = 2000
# Errors that may pass (the database briefly unreachable, a lock timeout): the task retries them.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
# A request still pending this long after it was made lost its task message (the broker was
# down at commit, say): labeling.recover_snapshot_work enqueues it again. A duplicate message for
# one that is merely waiting in a long queue finds it done, or locked, and does nothing.
REQUEST_LOST_AFTER = timedelta(minutes=15)


class SnapshotError(ValueError):
    """A snapshot that cannot be made as asked; the message says why."""


def create_snapshot(class_set: ClassSet, *, by=None, note: str = "", parent: DatasetSnapshot | None = None):
    """Freeze the counting labels of ``class_set`` into its next version and return it."""
    with transaction.atomic():
        # The class set's row lock serialises snapshots of one class set: versions never collide.
        class_set = ClassSet.objects.select_for_update().get(pk=class_set.pk)
        latest = class_set.snapshots.order_by("-version").first()
        if parent is not None and parent.class_set_id != class_set.pk:
            raise SnapshotError(f"The parent snapshot belongs to another class set than {class_set.name}.")
        snapshot = DatasetSnapshot.objects.create(
            class_set=class_set,
            version=latest.version + 1 if latest else 1,
            parent=parent or latest,
            content_hash="",  # not sealed until every item is written
            item_count=0,
            note=note,
            created_by=by,
        )
        snapshot.content_hash, snapshot.item_count, counts = _write_items(snapshot, _item_rows(class_set))
        snapshot.class_counts = class_counts(class_set, counts)
        snapshot.save(update_fields=["content_hash", "item_count", "class_counts"])
    return snapshot


def counting_labels(class_set: ClassSet):
    labels = Label.objects.filter(undone_at=None)
    if class_set.review_required:
        return labels.filter(review=ReviewStatus.ACCEPTED)
    return labels.exclude(review=ReviewStatus.REJECTED)


def class_counts(class_set: ClassSet, counts: Counter) -> dict[str, int]:
    """Every class of the set (zeros too), then any label the set no longer has."""
    ordered = {name: counts.get(name, 0) for name in class_set.classes}
    ordered.update((name, counts[name]) for name in sorted(counts) if name not in ordered)
    return ordered


# --- The items --------------------------------------------------------------------------------

ROW_FIELDS = (
    "pk",
    "own_value",
    "own_origin",
    "rep_value",
    "rep_origin",
    "image_area",
    "image_key",
    "shipped_image",
    "features",
    "model_version",
    "predicted_label",
)


def _item_rows(class_set: ClassSet):
    """One row per candidate task, in task order, streamed. Only tasks with a counting label,
    or folded into one, are read: the pending bulk of the queue is skipped by the semi-join."""
    counting = counting_labels(class_set)
    labeled = counting.filter(task__class_set=class_set, task__gold_label="").values("task")
    own = counting.filter(task=OuterRef("pk")).order_by("-created", "-pk")
    representative = counting.filter(task=OuterRef("duplicate_of"), task__gold_label="").order_by("-created", "-pk")
    tasks = (
        LabelTask.objects.filter(class_set=class_set, gold_label="")
        .filter(Q(pk__in=labeled) | Q(duplicate_of__in=labeled))
        .annotate(
            own_value=Subquery(own.values("value")[:1]),
            own_origin=Subquery(own.values("origin")[:1]),
            rep_value=Subquery(representative.values("value")[:1]),
            rep_origin=Subquery(representative.values("origin")[:1]),
            shipped_image=_shipped_image(),
        )
        .order_by("pk")
        .values_list(*ROW_FIELDS)
    )
    return tasks.iterator(chunk_size=READ_CHUNK)


def _shipped_image():
    """A prediction's image that arrived after its task was queued (the task has no key yet)."""
    shipped = PredictionImage.objects.filter(device=OuterRef("device"), prediction_id=OuterRef("prediction_id"))
    return Case(
        When(
            image_key="",
            device__isnull=False,
            prediction_id__isnull=False,
            then=Subquery(shipped.values("storage_key")[:1]),
        ),
        default=Value(None),
        output_field=CharField(),
    )


def _write_items(snapshot: DatasetSnapshot, rows) -> tuple[str, int, Counter]:
    digest, counts, batch = hashlib.sha256(HASH_FORMAT), Counter(), []
    for row in rows:
        item = _item(snapshot, dict(zip(ROW_FIELDS, row, strict=True)))
        if item is None:
            continue
        digest.update(canonical_line(item))
        counts[item.label] += 1
        batch.append(item)
        if len(batch) >= INSERT_BATCH:
            SnapshotItem.objects.bulk_create(batch)
            batch.clear()
    SnapshotItem.objects.bulk_create(batch)
    return digest.hexdigest(), sum(counts.values()), counts


def _item(snapshot: DatasetSnapshot, row: dict) -> SnapshotItem | None:
    if row["own_value"] is not None:
        label, origin = row["own_value"], row["own_origin"]
    elif row["rep_value"] is not None:
        label, origin = row["rep_value"], row["rep_origin"]
    else:
        return None
    area, key = row["image_area"], row["image_key"]
    if not key and row["shipped_image"]:
        area, key = PREDICTION_IMAGES, row["shipped_image"]
    return SnapshotItem(
        snapshot=snapshot,
        task_id=row["pk"],
        label=label,
        origin=origin,
        image_area=area if key else "",
        image_key=key,
        features=None if row["features"] is None else bytes(row["features"]),
        model_version=row["model_version"],
        predicted_label=row["predicted_label"],
    )


def canonical_line(item: SnapshotItem) -> bytes:
    features = None if item.features is None else hashlib.sha256(bytes(item.features)).hexdigest()
    fields = [
        item.task_id,
        item.label,
        item.origin,
        item.image_area,
        item.image_key,
        features,
        item.model_version,
        item.predicted_label,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def items_hash(items) -> str:
    """The content hash of ``items`` (SnapshotItem-like, in task order): recomputes a snapshot's."""
    digest = hashlib.sha256(HASH_FORMAT)
    for item in items:
        digest.update(canonical_line(item))
    return digest.hexdigest()


# --- Requests: snapshots built by a task ------------------------------------------------------


def request_snapshot(class_set: ClassSet, *, by=None, note: str = "") -> SnapshotRequest:
    """Queue a snapshot of ``class_set``; the ``labeling.create_snapshot`` task builds it."""
    request = SnapshotRequest.objects.create(class_set=class_set, requested_by=by, note=note)
    _enqueue_on_commit(request.pk)
    return request


def _enqueue_on_commit(pk: int) -> None:
    from labeling.tasks import create_snapshot as task  # labeling.tasks imports this module

    task.delay_on_commit(pk)


def build_requested(pk: int, *, may_retry: bool = False) -> str:
    """The task's work: 'done', 'failed', or 'skipped' when the request is not (or no longer)
    pending or another worker is building it. A transient database error is raised for the task
    to retry while ``may_retry``; any other error fails the request with the reason."""
    with transaction.atomic():
        # The row lock is the claim, held until the snapshot commits with the request's status.
        pending = SnapshotRequest.objects.select_for_update(skip_locked=True, of=("self",))
        request = pending.select_related("class_set").filter(pk=pk, status=SnapshotRequestStatus.PENDING).first()
        if request is None:
            return "skipped"
        try:
            # Its own atomic block is a savepoint here: a failed build leaves nothing but the reason.
            snapshot = create_snapshot(request.class_set, by=request.requested_by, note=request.note)
        except Exception as exc:
            if may_retry and isinstance(exc, TRANSIENT_DB_ERRORS):
                raise  # the whole transaction rolls back: the request is pending for the retry
            log.exception("Snapshot request %s failed", pk)
            return _finish_request(request, SnapshotRequestStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return _finish_request(request, SnapshotRequestStatus.DONE, snapshot=snapshot)


def _finish_request(request: SnapshotRequest, status: str, *, snapshot=None, error: str = "") -> str:
    request.status, request.snapshot, request.error = status, snapshot, error[:ERROR_MAX_LENGTH]
    request.finished_at = timezone.now()
    request.save(update_fields=["status", "snapshot", "error", "finished_at"])
    return status


def recover_requests(now=None, batch: int = 100) -> int:
    """Enqueue again the requests pending past REQUEST_LOST_AFTER; return how many."""
    now = now or timezone.now()
    lost = SnapshotRequest.objects.filter(status=SnapshotRequestStatus.PENDING, created__lt=now - REQUEST_LOST_AFTER)
    ids = list(lost.order_by("created").values_list("pk", flat=True)[:batch])
    for pk in ids:
        _enqueue_on_commit(pk)
    return len(ids)
