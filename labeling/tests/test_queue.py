"""Filling the queue: uncertainty scores, priority with open incidents, near-duplicate folding,
idempotent sources, and recomputing priorities."""

import math
import uuid

import numpy as np
import pytest
from django.utils import timezone

from drift.models import DriftEvent, Incident
from labeling import queue
from labeling.models import LabelTask, TaskStatus
from labeling.tests.factories import candidate, digits, tasks

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("least_confidence", 1 - 0.6),
        ("margin", 1 - (0.6 - 0.3)),
        ("entropy", -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / math.log(10)),
    ],
)
def test_uncertainty_follows_the_configured_method(method, expected):
    probabilities = {"7": 0.6, "1": 0.3, "9": 0.1}
    assert queue.uncertainty(probabilities, 0.6, 10, method) == pytest.approx(expected)


def test_a_top_k_that_leaves_mass_out_counts_the_rest_as_one_more_outcome():
    # {"7": 0.5} alone: the other half is somewhere else, so the margin is 0.5 - 0.5 = 0.
    assert queue.uncertainty({"7": 0.5}, 0.5, 10, "margin") == pytest.approx(1.0)
    assert queue.uncertainty(None, 0.8, 10, "least_confidence") == pytest.approx(0.2)


def test_an_unknown_method_is_refused_by_name():
    with pytest.raises(ValueError, match="least_confidence, margin or entropy"):
        queue.uncertainty({"7": 0.6}, 0.6, 10, "random")


def test_the_most_uncertain_task_has_the_highest_priority():
    sure, unsure = queue.enqueue([candidate(confidence=0.69), candidate(confidence=0.41)])
    assert unsure.priority > sure.priority
    assert list(LabelTask.objects.filter(status=TaskStatus.PENDING)) == [unsure, sure]


def test_a_sample_of_an_open_incident_comes_before_a_more_uncertain_one(device_a):

    now = timezone.now()
    incident = Incident.objects.create(kind="cohort", started_at=now, ended_at=now, device_count=2, event_count=1)
    DriftEvent.objects.create(device=device_a.device, client_id=uuid.uuid4(), created=now, incident=incident)
    linked, other = queue.enqueue([candidate(confidence=0.69, incident_id=incident.pk), candidate(confidence=0.41)])
    assert linked.priority > other.priority


def test_the_same_source_row_is_queued_once():
    first = queue.enqueue([candidate(key="prediction:a:1")])
    again = queue.enqueue([candidate(key="prediction:a:1"), candidate(key="prediction:a:1")])
    assert len(first) == 1 and again == []
    assert LabelTask.objects.count() == 1


def test_a_model_without_a_class_set_is_not_queued():
    assert queue.enqueue([candidate(model_version="unknown@1")]) == []


def test_near_duplicates_fold_into_one_task_that_counts_them():
    rng = np.random.default_rng(0)
    scene = rng.normal(size=64)
    representative, *copies = tasks(1, features=scene) + [
        task for _ in range(3) for task in tasks(1, features=scene + rng.normal(0, 0.01, 64))
    ]
    different = tasks(1, features=rng.normal(size=64))[0]
    assert all(copy.status == TaskStatus.FOLDED and copy.duplicate_of == representative for copy in copies)
    representative.refresh_from_db()
    assert representative.duplicate_count == 3
    assert different.status == TaskStatus.PENDING and different.duplicate_of is None


def test_folding_can_be_turned_off(settings):
    settings.LABELING_FOLD_DISTANCE = 0
    scene = np.ones(16)
    assert [task.status for task in tasks(2, features=scene)] == [TaskStatus.PENDING] * 2


def test_the_fold_key_is_stable_and_shared_by_near_vectors():
    vector = np.random.default_rng(1).normal(size=32).astype("<f4")
    assert queue.fold_key(vector.tobytes()) == queue.fold_key((vector * 3).tobytes())  # direction, not length
    assert queue.fold_key(None) == ""


def test_priorities_are_recomputed_for_a_new_method(settings):
    task = queue.enqueue([candidate(confidence=0.6, probabilities={"7": 0.6, "1": 0.4})])[0]
    assert task.uncertainty == pytest.approx(0.4)
    assert queue.recompute_priorities("digits@2", method="margin") == 1
    task.refresh_from_db()
    assert task.uncertainty == pytest.approx(0.8) and task.priority == pytest.approx(0.8)


def test_the_digits_class_set_ships_with_the_system():
    assert digits().classes == [str(n) for n in range(10)]


def test_a_key_another_worker_queued_meanwhile_is_skipped_not_an_error(monkeypatch):
    queue.enqueue([candidate(key="prediction:a:9")])
    original = queue.LabelTask.objects.filter

    def stale(*args, **kwargs):  # the existence check misses the row the other worker wrote
        result = original(*args, **kwargs)
        return result.none() if "key__in" in kwargs else result

    monkeypatch.setattr(queue.LabelTask.objects, "filter", stale)
    assert (
        queue.enqueue([candidate(key="prediction:a:9"), candidate(key="prediction:a:10")])[0].key == "prediction:a:10"
    )
    assert LabelTask.objects.filter(key__startswith="prediction:a:").count() == 2


def test_a_sample_with_an_image_never_folds_into_a_task_without_one():
    # The demo found it: a device's uncertain prediction (logged without its image) came first,
    # and the same scene's quarantined sample, the one with the picture, disappeared behind it.
    scene = np.random.default_rng(2).normal(size=64)
    imageless = tasks(1, features=scene)[0]
    pictured = tasks(1, features=scene + 0.001, image_area="drift_images", image_key="d/1.png")[0]
    assert pictured.status == TaskStatus.PENDING and pictured.duplicate_of is None
    # An image-less copy still folds into the pictured task, and a second picture into either.
    later = tasks(1, features=scene + 0.002)[0]
    again = tasks(1, features=scene - 0.001, image_area="drift_images", image_key="d/2.png")[0]
    assert later.status == again.status == TaskStatus.FOLDED
    assert again.duplicate_of == pictured
    assert imageless.status == TaskStatus.PENDING
