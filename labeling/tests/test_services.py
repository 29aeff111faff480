"""Working the queue: leases (also under concurrency), expiry, labels inside the class set,
undo, skip, review, gold tasks, feedback from devices."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devices.models import PredictionLog
from labeling import services
from labeling.models import ClassSet, Label, LabelOrigin, LabelTask, ReviewStatus, TaskStatus
from labeling.services import LabelingError
from labeling.tests.factories import digits, tasks, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def lena(django_user_model):
    return user_with(django_user_model, "lena", "label_tasks")


@pytest.fixture
def liam(django_user_model):
    return user_with(django_user_model, "liam", "label_tasks")


@pytest.fixture
def rita(django_user_model):
    return user_with(django_user_model, "rita", "review_labels")


def test_a_labeler_gets_the_top_task_and_keeps_it_until_answered(lena):
    low, high = tasks(1, confidence=0.69)[0], tasks(1, confidence=0.41)[0]
    served = services.next_task(lena)
    assert served == high and served.status == TaskStatus.LEASED and served.leased_by == lena
    assert services.next_task(lena) == high  # a reload shows the same task, not a second lease
    services.record_label(lena, high.pk, "3")
    assert services.next_task(lena) == low


def test_two_labelers_never_get_the_same_task(lena, liam):
    tasks(2)
    first, second = services.next_task(lena), services.next_task(liam)
    assert first != second


def test_a_third_labeler_gets_nothing_when_every_task_is_leased(lena, liam, django_user_model):
    tasks(2)
    services.next_task(lena), services.next_task(liam)
    assert services.next_task(user_with(django_user_model, "lou", "label_tasks")) is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_under_concurrency_one_task_goes_to_exactly_one_of_many_labelers(django_user_model):
    (task,) = tasks(1)
    labelers = [user_with(django_user_model, f"l{n}", "label_tasks") for n in range(8)]
    served, barrier = {}, threading.Barrier(len(labelers))

    def claim(user):
        barrier.wait()
        try:
            served[user.pk] = services.next_task(user)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(user,)) for user in labelers]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    winners = [user for user, got in served.items() if got is not None]
    assert len(winners) == 1 and served[winners[0]] == task
    assert LabelTask.objects.get(pk=task.pk).leased_by_id == winners[0]


def test_an_expired_lease_returns_the_task_to_the_queue(lena, liam):
    (task,) = tasks(1)
    services.next_task(lena)
    later = timezone.now() + timedelta(seconds=301)
    assert services.next_task(liam, now=later) == task
    with pytest.raises(LabelingError, match="lease"):
        services.record_label(lena, task.pk, "1", now=later)
    services.record_label(liam, task.pk, "1", now=later)


def test_the_beat_task_releases_expired_leases(lena):
    (task,) = tasks(1)
    services.next_task(lena)
    assert services.release_expired_leases(timezone.now() + timedelta(hours=1)) == 1
    task.refresh_from_db()
    assert (task.status, task.leased_by) == (TaskStatus.PENDING, None)


@pytest.mark.parametrize("value", ["10", "seven", "", 7, None])
def test_a_label_outside_the_class_set_is_refused_and_nothing_is_stored(lena, value):
    (task,) = tasks(1)
    services.next_task(lena)
    with pytest.raises(LabelingError, match="is not a class of digits"):
        services.record_label(lena, task.pk, value)
    assert not Label.objects.exists()
    assert LabelTask.objects.get(pk=task.pk).status == TaskStatus.LEASED


def test_a_label_on_a_task_leased_by_someone_else_is_refused(lena, liam):
    (task,) = tasks(1)
    services.next_task(lena)
    with pytest.raises(LabelingError, match="someone else"):
        services.record_label(liam, task.pk, "1")


def test_undo_takes_back_the_last_label_and_serves_its_task_again(lena):
    first, second = tasks(2)
    a = services.next_task(lena)
    services.record_label(lena, a.pk, "1")
    b = services.next_task(lena)
    services.record_label(lena, b.pk, "2")
    assert services.undo(lena) == b
    assert Label.objects.get(task=b).undone_at is not None
    assert services.next_task(lena) == b
    services.record_label(lena, b.pk, "4")
    assert [label.value for label in Label.objects.filter(task=b, undone_at=None)] == ["4"]


def test_undo_with_nothing_to_undo_is_none(lena):
    assert services.undo(lena) is None


def test_after_an_undo_the_undone_task_is_shown_before_the_one_on_screen(lena):
    tasks(3)
    first = services.next_task(lena)
    services.record_label(lena, first.pk, "1")
    on_screen = services.next_task(lena)
    assert services.undo(lena) == first
    assert services.next_task(lena) == first
    services.record_label(lena, first.pk, "2")
    assert services.next_task(lena) == on_screen  # still leased to the labeler


def test_skip_gives_the_task_back_and_the_labeler_gets_another(lena):
    first, second = tasks(1, confidence=0.41)[0], tasks(1, confidence=0.6)[0]
    assert services.next_task(lena) == first
    assert services.skip(lena, first.pk)
    assert services.next_task(lena, skipped=[first.pk]) == second


def test_with_review_a_label_waits_then_accept_finishes_and_reject_requeues(lena, rita):
    class_set = digits()
    class_set.review_required = True
    class_set.save()
    accepted_task, rejected_task = tasks(2)
    for _ in range(2):
        services.record_label(lena, services.next_task(lena).pk, "5")
    labels = {label.task_id: label for label in Label.objects.all()}
    assert set(LabelTask.objects.values_list("status", flat=True)) == {TaskStatus.LABELED}
    services.review(rita, labels[accepted_task.pk].pk, accept=True)
    services.review(rita, labels[rejected_task.pk].pk, accept=False, note="it is a 3")
    accepted_task.refresh_from_db(), rejected_task.refresh_from_db()
    assert (accepted_task.status, rejected_task.status) == (TaskStatus.DONE, TaskStatus.PENDING)
    assert Label.objects.get(pk=labels[rejected_task.pk].pk).review == ReviewStatus.REJECTED
    with pytest.raises(LabelingError, match="unreviewed"):
        services.review(rita, labels[accepted_task.pk].pk, accept=False)


def test_gold_tasks_are_served_at_the_gold_rate_and_answered_once_per_labeler(lena):
    class_set = digits()
    class_set.gold_rate = 1.0
    class_set.save()
    (gold,) = tasks(1)
    LabelTask.objects.filter(pk=gold.pk).update(gold_label="8", status=TaskStatus.DONE)
    tasks(1)
    served = services.next_task(lena, class_set)
    assert served == gold
    services.record_label(lena, gold.pk, "3")
    assert services.next_task(lena, class_set) != gold  # answered once: the queue again
    with pytest.raises(LabelingError, match="already answered"):
        services.record_label(lena, gold.pk, "8")


def test_gold_tasks_are_mixed_in_without_choosing_a_class_set(lena):
    ClassSet.objects.filter(name="digits").update(gold_rate=1.0)
    (gold,) = tasks(1)
    LabelTask.objects.filter(pk=gold.pk).update(gold_label="8", status=TaskStatus.DONE)
    tasks(1)
    assert services.next_task(lena) == gold


def test_a_reviewer_cannot_review_their_own_label(django_user_model):
    both = user_with(django_user_model, "bo", "label_tasks", "review_labels")
    ClassSet.objects.filter(name="digits").update(review_required=True)
    (task,) = tasks(1)
    label = services.record_label(both, services.next_task(both).pk, "5")
    with pytest.raises(LabelingError, match="own label"):
        services.review(both, label.pk, accept=True)


def test_the_published_queue_counts_leave_gold_tasks_out(lena):
    tasks(3)
    LabelTask.objects.filter(pk=LabelTask.objects.first().pk).update(gold_label="1")
    services.next_task(lena)
    assert services.queue_counts() == {"pending": "1", "leased": "1", "labeled": "0"}


def _log(device, **fields) -> PredictionLog:
    return PredictionLog.objects.create(
        device=device,
        client_id=uuid.uuid4(),
        created=timezone.now(),
        model_version="digits@1",
        label="7",
        confidence=0.9,
        **fields,
    )


def test_feedback_on_an_own_prediction_is_a_label_that_counts(device_a):
    prediction = _log(device_a.device)
    label, created = services.record_feedback(device_a.device, prediction.client_id, "1", client_id=uuid.uuid4())
    assert created and label.origin == LabelOrigin.FEEDBACK and label.device == device_a.device
    assert label.task.status == TaskStatus.DONE and label.task.predicted_label == "7"


def test_feedback_is_idempotent_by_its_id(device_a):
    prediction, key = _log(device_a.device), uuid.uuid4()
    first, _ = services.record_feedback(device_a.device, prediction.client_id, "1", client_id=key)
    again, created = services.record_feedback(device_a.device, prediction.client_id, "1", client_id=key)
    assert again == first and not created and Label.objects.count() == 1


def test_feedback_on_another_devices_prediction_is_not_found(device_a, device_b):
    prediction = _log(device_b.device)
    with pytest.raises(LookupError):
        services.record_feedback(device_a.device, prediction.client_id, "1")
    assert not Label.objects.exists()


def test_feedback_outside_the_class_set_is_refused(device_a):
    prediction = _log(device_a.device)
    with pytest.raises(LabelingError, match="not a class"):
        services.record_feedback(device_a.device, prediction.client_id, "cat")
