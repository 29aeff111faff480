"""The alert rule kinds the labeling app adds to drift's rules (registered in LabelingConfig.ready):

- ``accuracy_floor`` (labeling.performance): ``min_accuracy`` (0–1), ``window_hours`` (24),
  ``min_labels`` (30), ``by`` (model_version | group | device) — slices under the floor;
- ``label_backlog``: ``max_pending`` (whole number) and/or ``max_age_hours`` — class sets whose
  pending tasks are more than max_pending, or whose oldest pending task waits longer.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Min

from drift.alerts.registry import Finding, register_kind
from labeling import performance
from labeling.models import LabelTask, TaskStatus


def register() -> None:
    register_kind("accuracy_floor", "Accuracy below floor", performance.validate_floor, performance.floor_findings)
    register_kind("label_backlog", "Label backlog", validate_backlog, backlog_findings)


def validate_backlog(parameters: dict) -> dict:
    given = [name for name in ("max_pending", "max_age_hours") if name in parameters]
    if not given:
        raise ValueError("Give max_pending, max_age_hours or both.")
    for name in given:
        value = parameters[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number ≥ 0.")
    return parameters


def backlog_findings(rule, parameters: dict, now: datetime) -> list[Finding]:
    pending = LabelTask.objects.filter(status=TaskStatus.PENDING, gold_label="")
    rows = (
        pending.values("class_set__name").annotate(count=Count("pk"), oldest=Min("created")).order_by("class_set__name")
    )
    found = []
    for row in rows:
        name = row["class_set__name"]
        age_hours = (now - row["oldest"]).total_seconds() / 3600
        too_many = "max_pending" in parameters and row["count"] > parameters["max_pending"]
        too_old = "max_age_hours" in parameters and age_hours > parameters["max_age_hours"]
        if too_many or too_old:
            found.append(
                Finding(
                    f"class_set:{name}",
                    f"{row['count']} tasks of {name} wait for a label; the oldest for {age_hours:.1f} h.",
                    {"pending": row["count"], "oldest_hours": round(age_hours, 2), **parameters},
                )
            )
    return found
