"""How well and how fast each labeler works over a period, for the lead's page.

One query (:func:`label_rows`) reads the period's labels; pure functions turn them into numbers:

- **labels**: the labeler's labels not undone;
- **throughput**: labels per hour of active time, the active time being the sum of ``Label.seconds``
  (serving the task → answer), so breaks do not count against anyone;
- **gold accuracy**: the share of answers to gold tasks equal to the gold label;
- **agreement**: Cohen's kappa between the labeler's live labels and other labelers' live labels on
  the same tasks (one pair per other labeler and task): agreement corrected for chance, so a
  labeler who always answers the majority class does not score well;
- **acceptance**: the share of the labeler's reviewed labels a reviewer accepted.

A number without data (no gold task answered, no shared task, nothing reviewed) is ``None``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from django.contrib.auth import get_user_model

from labeling.models import Label, ReviewStatus


class LabelRow(NamedTuple):
    labeler_id: int
    labeler: str
    task_id: int
    value: str
    seconds: float | None
    review: str
    gold_label: str


@dataclass(frozen=True)
class LabelerQuality:
    labeler_id: int
    labeler: str
    labels: int
    active_seconds: float
    throughput: float | None
    gold_answered: int
    gold_accuracy: float | None
    agreement_pairs: int
    kappa: float | None
    reviewed: int
    acceptance: float | None

    @property
    def active_hours(self) -> float:
        return self.active_seconds / 3600


def label_rows(since: datetime, until: datetime) -> list[LabelRow]:
    """The labelers' labels made in [since, until), not undone. Device feedback has no labeler and
    is left out. (No index on ``created`` alone: people make labels, so even years of them are a
    scan an occasional lead's page can afford, and an index would tax every label written.)"""
    labels = Label.objects.filter(created__gte=since, created__lt=until, undone_at=None, labeled_by__isnull=False)
    username = f"labeled_by__{get_user_model().USERNAME_FIELD}"
    columns = ("labeled_by", username, "task", "value", "seconds", "review", "task__gold_label")
    return [LabelRow(*values) for values in labels.order_by().values_list(*columns).iterator()]


def labeler_quality(since: datetime, until: datetime) -> list[LabelerQuality]:
    return summarize(label_rows(since, until))


def summarize(rows: Sequence[LabelRow]) -> list[LabelerQuality]:
    """One summary per labeler, the most productive first."""
    by_labeler: dict[int, list[LabelRow]] = defaultdict(list)
    for row in rows:
        by_labeler[row.labeler_id].append(row)
    pairs = agreement_pairs(rows)
    summaries = [_summary(own, pairs.get(labeler_id, ([], []))) for labeler_id, own in by_labeler.items()]
    return sorted(summaries, key=lambda summary: (-summary.labels, summary.labeler))


def _summary(own: list[LabelRow], pairs: tuple[list[str], list[str]]) -> LabelerQuality:
    gold = [row for row in own if row.gold_label]
    reviewed = [row for row in own if row.review in (ReviewStatus.ACCEPTED, ReviewStatus.REJECTED)]
    return LabelerQuality(
        labeler_id=own[0].labeler_id,
        labeler=own[0].labeler,
        labels=len(own),
        active_seconds=active_seconds(own),
        throughput=throughput(own),
        gold_answered=len(gold),
        gold_accuracy=gold_accuracy(own),
        agreement_pairs=len(pairs[0]),
        kappa=cohen_kappa(*pairs),
        reviewed=len(reviewed),
        acceptance=acceptance_rate(own),
    )


def active_seconds(rows: Iterable[LabelRow]) -> float:
    return float(sum(row.seconds for row in rows if _timed(row)))


def throughput(rows: Sequence[LabelRow]) -> float | None:
    """Labels per hour of active time, counting only the labels whose time is known."""
    timed = [row for row in rows if _timed(row)]
    hours = active_seconds(timed) / 3600
    return len(timed) / hours if hours > 0 else None


def _timed(row: LabelRow) -> bool:
    return row.seconds is not None and row.seconds > 0


def gold_accuracy(rows: Iterable[LabelRow]) -> float | None:
    answers = [row.value == row.gold_label for row in rows if row.gold_label]
    return sum(answers) / len(answers) if answers else None


def acceptance_rate(rows: Iterable[LabelRow]) -> float | None:
    verdicts = [
        row.review == ReviewStatus.ACCEPTED
        for row in rows
        if row.review in (ReviewStatus.ACCEPTED, ReviewStatus.REJECTED)
    ]
    return sum(verdicts) / len(verdicts) if verdicts else None


def agreement_pairs(rows: Iterable[LabelRow]) -> dict[int, tuple[list[str], list[str]]]:
    """labeler id → (their values, the other labeler's values), one pair per other labeler's live
    label on a task they both labeled. A rejected label is no longer anyone's answer."""
    by_task: dict[int, list[LabelRow]] = defaultdict(list)
    for row in rows:
        if row.review != ReviewStatus.REJECTED:
            by_task[row.task_id].append(row)
    pairs: dict[int, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for labels in by_task.values():
        for mine in labels:
            for theirs in labels:
                if theirs.labeler_id != mine.labeler_id:
                    pairs[mine.labeler_id][0].append(mine.value)
                    pairs[mine.labeler_id][1].append(theirs.value)
    return dict(pairs)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' answers on the same items; equals
    ``sklearn.metrics.cohen_kappa_score`` (tests check it), computed here because scikit-learn
    is not a server requirement. ``None`` without pairs, or when both raters gave one and the same
    class throughout (the chance agreement is then 1 and kappa is undefined).

    >>> round(cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]), 3)
    0.5
    """
    if len(first) != len(second):
        raise ValueError(f"Two raters must answer the same items ({len(first)} ≠ {len(second)}).")
    n = len(first)
    if n == 0:
        return None
    _, codes = np.unique(np.asarray([*first, *second], dtype=str), return_inverse=True)
    k = int(codes.max()) + 1
    confusion = np.zeros((k, k))
    np.add.at(confusion, (codes[:n], codes[n:]), 1)
    observed = np.trace(confusion) / n
    expected = float(confusion.sum(axis=1) @ confusion.sum(axis=0)) / n**2
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))
