"""Working the queue: leases, labels, undo, skip, review and feedback. The rules live here; pages,
API views, admin actions and tasks call these functions.

- ``next_task`` gives a labeler their current lease, or claims the highest-priority pending task
  with a lease of LABELING_LEASE_SECONDS. The claim is a conditional UPDATE (and SKIP LOCKED on
  PostgreSQL), so two labelers never hold the same task. Expired leases go back to the queue
  first. With the class set's gold rate, a gold task the labeler has not answered yet is served
  instead (gold tasks are never leased: everybody answers them once).
- ``record_label`` needs the labeler's live lease and a value in the class set. Without review the
  task is done at once; with review it waits for a reviewer.
- ``undo`` takes back the labeler's last label (not yet reviewed): the task is leased to them
  again, so the next page shows it.
- ``review`` accepts a label (the task is done) or rejects it (the task goes back to the queue).
- ``record_feedback`` is a device's or an application's true label for one of its own
  predictions: a label of origin ``feedback``, reviewable like any other.
- Live queue counts are not counted on the request path: an answer marks them dirty and the
  ``labeling.publish_counts`` task counts and publishes them, at most once a second.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from devices.models import PredictionLog
from labeling import sources
from labeling.models import ClassSet, Label, LabelOrigin, LabelTask, ReviewStatus, TaskSource, TaskStatus
from labeling.queue import class_sets_for, enqueue, model_name, prediction_key
from sphere import live
from sphere.admin_paginator import COUNT_CAP

log = logging.getLogger(__name__)
LABELING_TOPIC = "labeling"
UNDO_WINDOW = timedelta(minutes=30)


class LabelingError(ValueError):
    """A request the queue refuses; the message says why."""


# --- Serving ----------------------------------------------------------------------------------


def next_task(user, class_set: ClassSet | None = None, *, skipped=(), now=None, rng=random) -> LabelTask | None:
    now = now or timezone.now()
    current = _current_lease(user, class_set, now)
    if current is not None:
        return current
    gold = _gold_task(user, class_set, rng)
    if gold is not None:
        return gold
    release_expired_leases(now)
    return _claim(user, class_set, skipped, now)


def _current_lease(user, class_set, now) -> LabelTask | None:
    leases = LabelTask.objects.filter(status=TaskStatus.LEASED, leased_by=user, lease_expires_at__gt=now)
    if class_set is not None:
        leases = leases.filter(class_set=class_set)
    # The newest lease first: after an undo, the undone task (leased last) is the one shown.
    return leases.select_related("class_set").order_by("-lease_expires_at", "-pk").first()


def _gold_task(user, class_set, rng) -> LabelTask | None:
    if class_set is None:  # all class sets: the gold rate of the one whose task comes next
        class_set = _next_class_set()
    rate = class_set.gold_rate if class_set is not None else 0.0
    if not rate or rng.random() >= rate:
        return None
    answered = Label.objects.filter(labeled_by=user, task__class_set=class_set).exclude(task__gold_label="")
    gold = LabelTask.objects.filter(class_set=class_set).exclude(gold_label="").exclude(pk__in=answered.values("task"))
    return gold.select_related("class_set").order_by("?").first()


def _next_class_set() -> ClassSet | None:
    top = LabelTask.objects.filter(status=TaskStatus.PENDING, gold_label="").order_by("-priority", "id")
    pk = top.values_list("class_set", flat=True).first()
    return None if pk is None else ClassSet.objects.filter(pk=pk, gold_rate__gt=0).first()


def release_expired_leases(now=None) -> int:
    now = now or timezone.now()
    released = LabelTask.objects.filter(status=TaskStatus.LEASED, lease_expires_at__lte=now).update(
        status=TaskStatus.PENDING, leased_by=None, lease_expires_at=None
    )
    if released:
        publish_counts()
    return released


def _claim(user, class_set, skipped, now) -> LabelTask | None:
    pending = LabelTask.objects.filter(status=TaskStatus.PENDING, gold_label="")
    if class_set is not None:
        pending = pending.filter(class_set=class_set)
    if skipped:
        pending = pending.exclude(pk__in=list(skipped))
    expires = now + timedelta(seconds=settings.LABELING_LEASE_SECONDS)
    for _ in range(5):  # a candidate another labeler claimed first is simply the next one
        with transaction.atomic():
            candidates = pending.order_by("-priority", "id")
            if connection.features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True)
            pk = candidates.values_list("pk", flat=True).first()
            if pk is None:
                return None
            claimed = LabelTask.objects.filter(pk=pk, status=TaskStatus.PENDING).update(
                status=TaskStatus.LEASED, leased_by=user, lease_expires_at=expires
            )
        if claimed:
            return LabelTask.objects.select_related("class_set").get(pk=pk)
    return None


# --- Answering --------------------------------------------------------------------------------


# What recording a label reads of its task: the lease, the gold answer and the class set. Not the
# feature vector or the probabilities (kilobytes per row that the answer never looks at).
_ANSWER_FIELDS = (
    "status",
    "gold_label",
    "leased_by_id",
    "lease_expires_at",
    "class_set__name",
    "class_set__classes",
    "class_set__review_required",
)


def record_label(user, task_id: int, value: str, *, seconds: float | None = None, now=None) -> Label:
    now = now or timezone.now()
    with transaction.atomic():
        task = _locked_for_answer(task_id)
        if task is None:
            raise LabelingError(f"Task {task_id} does not exist.")
        _check_value(task.class_set, value)
        if task.is_gold:
            if Label.objects.filter(task=task, labeled_by=user, undone_at=None).exists():
                raise LabelingError("You already answered this gold task; take the next task.")
            return Label.objects.create(task=task, value=value, labeled_by=user, seconds=seconds, created=now)
        if task.status != TaskStatus.LEASED or task.leased_by_id != user.pk or task.lease_expires_at <= now:
            raise LabelingError("Your lease on this task has expired or belongs to someone else; take the next task.")
        label = Label.objects.create(
            task=task, value=value, labeled_by=user, seconds=seconds, created=now, review=_review_of(task.class_set)
        )
        task.status = TaskStatus.LABELED if task.class_set.review_required else TaskStatus.DONE
        task.leased_by, task.lease_expires_at = None, None
        task.save(update_fields=["status", "leased_by", "lease_expires_at"])
    publish_counts()
    return label


def _locked_for_answer(task_id: int) -> LabelTask | None:
    # Only the task's row is locked (PostgreSQL's FOR NO KEY UPDATE OF the task): locking the
    # joined class set as well would make every labeler of the set wait for each other, and for
    # a snapshot being built (create_snapshot holds the class set's row for its whole run).
    # NO KEY: a feedback label inserted for the same task meanwhile need not wait either.
    locked = LabelTask.objects.select_for_update(of=("self",), no_key=True).select_related("class_set")
    try:
        # get(), not first(): no ORDER BY (the model's -priority ordering) for a primary-key read.
        return locked.only(*_ANSWER_FIELDS).get(pk=task_id)
    except LabelTask.DoesNotExist:
        return None


def _review_of(class_set: ClassSet) -> str:
    return ReviewStatus.UNREVIEWED if class_set.review_required else ReviewStatus.NOT_NEEDED


def _check_value(class_set: ClassSet, value) -> None:
    if not isinstance(value, str) or value not in class_set.classes:
        shown = ", ".join(class_set.classes[:20])
        raise LabelingError(f"{value!r} is not a class of {class_set.name} ({shown}).")


def skip(user, task_id: int) -> bool:
    """Give a leased task back to the queue (the page then excludes it for this labeler)."""
    released = LabelTask.objects.filter(pk=task_id, status=TaskStatus.LEASED, leased_by=user).update(
        status=TaskStatus.PENDING, leased_by=None, lease_expires_at=None
    )
    return bool(released)


def undo(user, now=None) -> LabelTask | None:
    """Take back the user's latest label of the last UNDO_WINDOW; its task is leased to them again."""
    now = now or timezone.now()
    with transaction.atomic():
        label = (
            Label.objects.select_for_update()
            .select_related("task")
            .filter(labeled_by=user, undone_at=None, created__gte=now - UNDO_WINDOW)
            .order_by("-created", "-pk")
            .first()
        )
        if label is None:
            return None
        if label.review not in (ReviewStatus.UNREVIEWED, ReviewStatus.NOT_NEEDED):
            raise LabelingError("That label was already reviewed; it can no longer be undone.")
        label.undone_at = now
        label.save(update_fields=["undone_at"])
        task = label.task
        if not task.is_gold:
            task.status, task.leased_by = TaskStatus.LEASED, user
            task.lease_expires_at = now + timedelta(seconds=settings.LABELING_LEASE_SECONDS)
            task.save(update_fields=["status", "leased_by", "lease_expires_at"])
    publish_counts()
    return task


def review(reviewer, label_id: int, *, accept: bool, note: str = "", now=None) -> Label:
    now = now or timezone.now()
    with transaction.atomic():
        label = Label.objects.select_for_update().select_related("task").filter(pk=label_id).first()
        if label is None:
            raise LabelingError(f"Label {label_id} does not exist.")
        # A label that needed no review may still be checked (a lead's spot check).
        if label.undone_at is not None or label.review not in (ReviewStatus.UNREVIEWED, ReviewStatus.NOT_NEEDED):
            raise LabelingError("Only a live, unreviewed label can be reviewed.")
        if label.labeled_by_id is not None and label.labeled_by_id == reviewer.pk:
            raise LabelingError("A reviewer cannot review their own label.")
        label.review = ReviewStatus.ACCEPTED if accept else ReviewStatus.REJECTED
        label.reviewed_by, label.reviewed_at, label.review_note = reviewer, now, note
        label.save(update_fields=["review", "reviewed_by", "reviewed_at", "review_note"])
        task = label.task
        if not task.is_gold:
            task.status = TaskStatus.DONE if accept else TaskStatus.PENDING
            task.save(update_fields=["status"])
    publish_counts()
    return label


# --- Feedback ---------------------------------------------------------------------------------


def record_feedback(device, prediction_id, value: str, *, client_id=None, now=None) -> tuple[Label, bool]:
    """The true label of one of the device's own predictions. Idempotent by ``client_id``;
    returns (label, created). Raises LookupError when the device logged no such prediction."""
    now = now or timezone.now()
    if client_id is not None:
        existing = Label.objects.filter(device=device, client_id=client_id).first()
        if existing is not None:
            return existing, False
    prediction = PredictionLog.objects.filter(device=device, client_id=prediction_id).first()
    if prediction is None:
        raise LookupError(f"This device logged no prediction {prediction_id}.")
    class_set = class_sets_for([prediction.model_version]).get(model_name(prediction.model_version))
    if class_set is None:
        raise LabelingError(
            f"Model {model_name(prediction.model_version)!r} has no class set; feedback can't be checked."
        )
    _check_value(class_set, value)
    with transaction.atomic():
        task = _feedback_task(prediction)
        label = Label.objects.create(
            task=task,
            value=value,
            origin=LabelOrigin.FEEDBACK,
            device=device,
            client_id=client_id,
            created=now,
            review=_review_of(class_set),
        )
        # A leased task is answered too: its labeler's lease ends rather than label it twice.
        if task.status in (TaskStatus.PENDING, TaskStatus.FOLDED, TaskStatus.LEASED):
            task.status = TaskStatus.LABELED if class_set.review_required else TaskStatus.DONE
            task.leased_by, task.lease_expires_at = None, None
            task.save(update_fields=["status", "leased_by", "lease_expires_at"])
    publish_counts()
    return label, True


def _feedback_task(prediction) -> LabelTask:
    key = prediction_key(prediction.device_id, prediction.client_id)
    task = LabelTask.objects.select_for_update().filter(key=key).first()
    if task is not None:
        return task
    # The same candidate as any queued prediction (image included), from the feedback source.
    row = {column: getattr(prediction, column) for column in sources.PREDICTION_COLUMNS}
    (task,) = enqueue(sources.prediction_candidates([row], TaskSource.FEEDBACK))
    return task


# --- Counts -----------------------------------------------------------------------------------

COUNTED = (TaskStatus.PENDING, TaskStatus.LEASED, TaskStatus.LABELED)
# Live counts are debounced off the request path: a change marks them dirty (one cache ADD), and
# the first mark of a quiet spell enqueues labeling.publish_counts COUNTS_DELAY_S later, which
# counts once for every change in between. At most one count per COUNTS_DELAY_S however fast the
# labels come. The mark expires after COUNTS_MARK_TTL_S, so a lost task message delays the
# counts by that much, never for good.
COUNTS_DIRTY_KEY = "labeling:counts-dirty"
COUNTS_DELAY_S = 1.0
COUNTS_MARK_TTL_S = 60


def queue_counts() -> dict[str, str]:
    """Work left: tasks pending, leased and labeled (awaiting review), gold tasks left out. Each
    count stops at COUNT_CAP ("10000+"), so a page that shows them stays cheap on any queue."""
    return {status: capped_count(LabelTask.objects.filter(status=status, gold_label="")) for status in COUNTED}


def capped_count(queryset) -> str:
    # Without its ordering: a LIMIT inside an ordered count would sort the whole queue first.
    count = queryset.order_by()[:COUNT_CAP].count()
    return f"{COUNT_CAP}+" if count >= COUNT_CAP else str(count)


def publish_counts() -> None:
    """The queue moved: have its counts published soon (after this transaction commits)."""
    transaction.on_commit(_mark_counts_dirty)


def _mark_counts_dirty() -> None:
    # After commit, so the count that the mark causes sees this change. Whichever mark comes
    # after the task cleared the last one enqueues the next task: no change goes unpublished.
    try:
        if cache.add(COUNTS_DIRTY_KEY, 1, timeout=COUNTS_MARK_TTL_S):
            _enqueue_publish_counts()
    except Exception:  # a page that misses one update must never fail the answer that changed it
        log.exception("the labeling counts could not be scheduled")
        _forget_mark()


def _enqueue_publish_counts() -> None:
    from labeling.tasks import publish_counts  # labeling.tasks imports this module

    publish_counts.apply_async(countdown=COUNTS_DELAY_S)


def _forget_mark() -> None:
    try:
        cache.delete(COUNTS_DIRTY_KEY)
    except Exception:
        log.warning("the labeling counts mark could not be cleared", exc_info=True)


def publish_queue_counts() -> dict[str, str]:
    """The labeling.publish_counts task: count the queue once and send it to the live pages."""
    cache.delete(COUNTS_DIRTY_KEY)  # first: a change committed from now on schedules the next run
    counts = queue_counts()
    live.publish(LABELING_TOPIC, "labeling.counts", counts)
    return counts


def touch_lease(user, task_id: int, now=None) -> bool:
    """Extend a live lease (the page calls it while a labeler is still looking)."""
    now = now or timezone.now()
    expires = now + timedelta(seconds=settings.LABELING_LEASE_SECONDS)
    return bool(
        LabelTask.objects.filter(pk=task_id, status=TaskStatus.LEASED, leased_by=user, lease_expires_at__gt=now).update(
            lease_expires_at=expires
        )
    )
