"""Accuracy where labels exist, per model version, group or device over time, and the accuracy
floor alert (CalmOps' performance floors): a slice whose accuracy falls under the floor is a
drift signal of its own, raised through drift's alert rules.

A label counts when it is live (not undone, not rejected in review) and its task is not a gold
task (gold tasks measure labelers, not the model). Accuracy = the share of counting labels equal
to the model's prediction on that sample. Feedback counts like any other label.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, F, Q, QuerySet
from django.db.models.functions import TruncDay, TruncHour

from drift.alerts.registry import Finding
from drift.models import ReportScope
from labeling.models import Label, ReviewStatus

SLICES = {"model_version": "task__model_version", "group": "task__device__group__name", "device": "task__device"}
BUCKETS = {"day": TruncDay, "hour": TruncHour}


def counting_labels() -> QuerySet[Label]:
    return (
        Label.objects.filter(undone_at=None, task__gold_label="")
        .exclude(review=ReviewStatus.REJECTED)
        .exclude(task__predicted_label="")
    )


def accuracy(
    since: datetime, until: datetime, *, by: str = "model_version", bucket: str | None = "day", labels=None
) -> list[dict]:
    """Rows of {slice, bucket (start time or None), labels, correct, accuracy}, oldest bucket first."""
    if by not in SLICES:
        raise ValueError(f"by must be one of {', '.join(SLICES)}, not {by!r}.")
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)} or none, not {bucket!r}.")
    rows = (labels if labels is not None else counting_labels()).filter(created__gte=since, created__lt=until)
    group_by = {"slice": F(SLICES[by])}
    if bucket is not None:
        group_by["bucket"] = BUCKETS[bucket]("created")
    rows = (
        rows.annotate(**group_by)
        .values(*group_by)
        .annotate(labels=Count("pk"), correct=Count("pk", filter=Q(value=F("task__predicted_label"))))
        .order_by(*(["bucket"] if bucket else []), "slice")
    )
    return [
        {
            "slice": None if row["slice"] is None else str(row["slice"]),
            "bucket": row.get("bucket"),
            "labels": row["labels"],
            "correct": row["correct"],
            "accuracy": row["correct"] / row["labels"],
        }
        for row in rows
    ]


# --- The accuracy floor alert kind ------------------------------------------------------------


def validate_floor(parameters: dict) -> dict:
    floor = parameters.get("min_accuracy")
    if not isinstance(floor, int | float) or isinstance(floor, bool) or not 0 <= floor <= 1:
        raise ValueError("min_accuracy must be a number between 0 and 1.")
    for name, default in (("window_hours", 24), ("min_labels", 30)):
        value = parameters.setdefault(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number ≥ 1.")
    if parameters.setdefault("by", "model_version") not in SLICES:
        raise ValueError(f"by must be one of {', '.join(SLICES)}.")
    return parameters


def floor_findings(rule, parameters: dict, now: datetime) -> list[Finding]:
    """Slices of the rule's scope with at least min_labels counting labels in the window whose
    accuracy is under min_accuracy."""
    by, floor = parameters["by"], parameters["min_accuracy"]
    since = now - timedelta(hours=parameters["window_hours"])
    rows = accuracy(since, now, by=by, bucket=None, labels=_scoped(counting_labels(), rule))
    return [
        Finding(
            f"{by}:{row['slice']}",
            f"Accuracy of {by} {row['slice']} is {row['accuracy']:.1%} over {row['labels']} labels "
            f"(floor {floor:.1%}, last {parameters['window_hours']} h).",
            {
                "by": by,
                "slice": row["slice"],
                "accuracy": round(row["accuracy"], 4),
                "labels": row["labels"],
                "floor": floor,
            },
        )
        for row in rows
        if row["labels"] >= parameters["min_labels"] and row["accuracy"] < floor
    ]


def _scoped(labels: QuerySet[Label], rule) -> QuerySet[Label]:
    if rule.scope == ReportScope.GROUP:
        return labels.filter(task__device__group__name=rule.scope_value)
    if rule.scope == ReportScope.DEVICE:
        return labels.filter(task__device=rule.scope_value)
    if rule.scope == ReportScope.MODEL_VERSION:
        return labels.filter(task__model_version=rule.scope_value)
    return labels
