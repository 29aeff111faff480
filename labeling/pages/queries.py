"""What the labeling pages read. Counts stop at COUNT_CAP (a LIMIT inside the count) and lists are
short, so a page costs the same with a hundred tasks queued or a million."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from devices.models import PredictionImage
from labeling.models import ClassSet, Label, LabelTask, ReviewStatus, TaskStatus
from labeling.services import capped_count
from labeling.sources import PREDICTION_IMAGES

REVIEW_BATCH = 20


shown_count = capped_count


def class_sets() -> list[ClassSet]:
    return list(ClassSet.objects.order_by("name").only("name"))


def class_set_named(name: str) -> ClassSet | None:
    return ClassSet.objects.filter(name=name).first()


# --- Counts -------------------------------------------------------------------------------------


def counts(user, class_set: ClassSet | None) -> dict[str, str]:
    return {
        "pending": pending_count(class_set),
        "labels_today": str(labels_today(user)),
        "awaiting_review": awaiting_review_count(),
    }


def pending_count(class_set: ClassSet | None) -> str:
    # Gold tasks stay pending for good (everybody answers them once): they are not work left.
    pending = LabelTask.objects.filter(status=TaskStatus.PENDING, gold_label="")
    if class_set is not None:
        pending = pending.filter(class_set=class_set)  # the labeling_task_next index
    return shown_count(pending)


def labels_today(user) -> int:
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    # The labeling_label_labeler_time index; one person's day of labels is small.
    return Label.objects.filter(labeled_by=user, created__gte=midnight, undone_at=None).count()


def awaiting_review_count() -> str:
    return shown_count(_unreviewed())


# --- Review queue -------------------------------------------------------------------------------


def review_queue(limit: int = REVIEW_BATCH) -> list[Label]:
    """The oldest live, unreviewed labels of class sets that require review, walked in the order
    of the labeling_label_review index, with their tasks' images."""
    labels = _unreviewed().select_related("task__class_set", "labeled_by", "device").defer("task__features")
    labels = list(labels.order_by("created")[:limit])
    attach_images([label.task for label in labels])
    return labels


def _unreviewed():
    return Label.objects.filter(review=ReviewStatus.UNREVIEWED, undone_at=None, task__class_set__review_required=True)


# --- Images -------------------------------------------------------------------------------------


def attach_images(tasks: list[LabelTask]) -> None:
    """Set ``image`` = (storage area, key) or None on each task: its own image, else the one its
    device shipped later for the prediction (tasks are copied when queued, and a prediction's image
    may arrive after it) — one query for all the late ones."""
    late = {(task.device_id, task.prediction_id) for task in tasks if _may_have_late_image(task)}
    late_keys = _prediction_image_keys(late)
    for task in tasks:
        if task.image_area and task.image_key:
            task.image = (task.image_area, task.image_key)
        else:
            key = late_keys.get((task.device_id, task.prediction_id))
            task.image = (PREDICTION_IMAGES, key) if key else None


def _may_have_late_image(task: LabelTask) -> bool:
    return not task.image_key and task.device_id is not None and task.prediction_id is not None


def _prediction_image_keys(predictions: set[tuple]) -> dict[tuple, str]:
    if not predictions:
        return {}
    wanted = Q()
    for device_id, prediction_id in predictions:
        wanted |= Q(device_id=device_id, prediction_id=prediction_id)  # the unique (device, prediction) index
    found = PredictionImage.objects.filter(wanted).values_list("device_id", "prediction_id", "storage_key")
    return {(device_id, prediction_id): key for device_id, prediction_id, key in found}
