"""The lead's numbers (labeling.quality): kappa equal to scikit-learn's on fixed data, the pairs it is
computed on, throughput over active time, gold accuracy, acceptance, and the period's query."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from sklearn.metrics import cohen_kappa_score

from labeling import quality
from labeling.models import Label, LabelTask, ReviewStatus
from labeling.quality import LabelRow
from labeling.tests.factories import tasks, user_with

UNREVIEWED, ACCEPTED, REJECTED = ReviewStatus.UNREVIEWED, ReviewStatus.ACCEPTED, ReviewStatus.REJECTED


def row(labeler_id, task_id, value, *, seconds=None, review=UNREVIEWED, gold="") -> LabelRow:
    return LabelRow(labeler_id, f"user{labeler_id}", task_id, value, seconds, review, gold)


# --- Cohen's kappa ------------------------------------------------------------------------------

FIXED = [
    (list("0123456789"), list("0123456789")),
    (list("0123456789"), list("0123456780")),
    (list("aabbccddee"), list("abbbccddea")),
    (list("7777771111"), list("7771111111")),
    (list("yes yes no no yes".split()), list("no yes no yes yes".split())),
    (list("3333"), list("4444")),  # no agreement and no chance of it
    (list("abab"), list("baba")),  # perfect disagreement: -1
]


@pytest.mark.parametrize(("first", "second"), FIXED)
def test_kappa_equals_scikit_learn_on_fixed_data(first, second):
    assert quality.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


def test_kappa_equals_scikit_learn_on_seeded_random_raters():
    rng = np.random.default_rng(7)
    classes = np.array([str(n) for n in range(10)])
    for _ in range(20):
        truth = rng.integers(0, 10, size=200)
        noisy = np.where(rng.random(200) < 0.3, rng.integers(0, 10, size=200), truth)
        first, second = list(classes[truth]), list(classes[noisy])
        assert quality.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


def test_kappa_is_none_without_pairs_or_when_both_raters_always_give_the_same_class():
    assert quality.cohen_kappa([], []) is None
    assert quality.cohen_kappa(["3", "3"], ["3", "3"]) is None  # scikit-learn: nan (0/0)


def test_kappa_needs_as_many_answers_from_each_rater():
    with pytest.raises(ValueError, match="same items"):
        quality.cohen_kappa(["1", "2"], ["1"])


def test_agreement_pairs_each_labelers_live_labels_with_the_other_labelers_on_the_same_task():
    rows = [
        row(1, 10, "3"),
        row(2, 10, "3"),
        row(3, 10, "5"),
        row(1, 11, "7"),
        row(2, 11, "1", review=REJECTED),  # rejected: nobody's answer any more
        row(1, 12, "4"),  # labeled by one labeler only: no pair
    ]
    pairs = quality.agreement_pairs(rows)
    assert pairs[1] == (["3", "3"], ["3", "5"])
    assert pairs[2] == (["3", "3"], ["3", "5"])
    assert pairs[3] == (["5", "5"], ["3", "3"])


# --- Throughput, gold, acceptance -------------------------------------------------------------


def test_throughput_is_labels_per_hour_of_active_time():
    rows = [row(1, n, "1", seconds=seconds) for n, seconds in enumerate([30, 60, 90])]
    assert quality.active_seconds(rows) == 180
    assert quality.throughput(rows) == pytest.approx(3 / (180 / 3600))  # 60 an hour


def test_labels_without_a_known_time_are_left_out_of_the_throughput():
    rows = [row(1, 1, "1", seconds=36), row(1, 2, "1", seconds=None), row(1, 3, "1", seconds=0)]
    assert quality.throughput(rows) == pytest.approx(100)
    assert quality.throughput([row(1, 2, "1")]) is None


def test_gold_accuracy_is_the_share_of_gold_answers_equal_to_the_gold_label():
    rows = [row(1, 1, "3", gold="3"), row(1, 2, "5", gold="6"), row(1, 3, "1", gold="1"), row(1, 4, "9")]
    assert quality.gold_accuracy(rows) == pytest.approx(2 / 3)
    assert quality.gold_accuracy([row(1, 4, "9")]) is None


def test_acceptance_is_the_share_accepted_among_the_reviewed():
    rows = [row(1, 1, "3", review=ACCEPTED), row(1, 2, "3", review=REJECTED), row(1, 3, "3", review=ACCEPTED)]
    assert quality.acceptance_rate([*rows, row(1, 4, "3")]) == pytest.approx(2 / 3)
    assert quality.acceptance_rate([row(1, 4, "3")]) is None


def test_the_summary_has_one_row_per_labeler_the_most_productive_first():
    rows = [
        row(1, 1, "3", seconds=60, gold="3"),
        row(2, 1, "3", seconds=30, gold="3"),
        row(2, 2, "4", seconds=30, review=ACCEPTED),
        row(2, 3, "5", seconds=30, review=REJECTED),
    ]
    first, second = quality.summarize(rows)
    assert (first.labeler, first.labels, first.active_hours) == ("user2", 3, pytest.approx(90 / 3600))
    assert (first.gold_answered, first.gold_accuracy, first.reviewed, first.acceptance) == (1, 1.0, 2, 0.5)
    assert (first.agreement_pairs, first.kappa) == (1, None)  # one pair, both "3": kappa undefined
    assert (second.labeler, second.labels, second.throughput) == ("user1", 1, pytest.approx(60))


# --- The query ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_period_query_reads_the_labelers_live_labels_with_their_tasks_gold_label(django_user_model, device_a):
    lena = user_with(django_user_model, "lena", "label_tasks")
    first, second = tasks(2)
    LabelTask.objects.filter(pk=first.pk).update(gold_label="3")
    now = timezone.now()
    Label.objects.create(task=first, value="3", labeled_by=lena, seconds=4.5, created=now - timedelta(hours=1))
    Label.objects.create(task=second, value="1", labeled_by=lena, created=now - timedelta(days=8))  # too old
    Label.objects.create(task=second, value="2", labeled_by=lena, created=now, undone_at=now)  # undone
    Label.objects.create(task=second, value="4", device=device_a.device, origin="feedback", created=now)  # no labeler
    rows = quality.label_rows(now - timedelta(days=7), now + timedelta(seconds=1))
    assert rows == [LabelRow(lena.pk, "lena", first.pk, "3", 4.5, UNREVIEWED, "3")]
