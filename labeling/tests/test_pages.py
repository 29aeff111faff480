"""The labeling pages: who may open them, the next-task page and its answers (label, skip, undo,
through labeling.services), the review queue, the lead's numbers, the live counts, and the cost of
the next-task page on a long queue."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core import signing
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.models import PredictionImage
from labeling import services
from labeling.models import ClassSet, Label, LabelTask, ReviewStatus, TaskSource, TaskStatus
from labeling.pages import views
from labeling.tests.factories import digits, tasks

pytestmark = pytest.mark.django_db
NEXT, REVIEW, LEAD = reverse("labeling:next"), reverse("labeling:review"), reverse("labeling:lead")
UNDO, COUNTS = reverse("labeling:undo"), reverse("labeling:counts")


# --- Personas ---------------------------------------------------------------------------------


def staff_with(django_user_model, username: str, *codenames: str, staff: bool = True):
    user = django_user_model.objects.create_user(username, password=f"pw-{username}-123", is_staff=staff)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="labeling", codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def labeler(django_user_model):
    return staff_with(django_user_model, "lena", "label_tasks")


@pytest.fixture
def second_labeler(django_user_model):
    return staff_with(django_user_model, "liam", "label_tasks")


@pytest.fixture
def reviewer(django_user_model):
    return staff_with(django_user_model, "rita", "review_labels")


@pytest.fixture
def lead(django_user_model):
    return staff_with(django_user_model, "leo", "lead_labeling")


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def as_labeler(labeler):
    return client_for(labeler)


@pytest.fixture
def as_reviewer(reviewer):
    return client_for(reviewer)


def text(response) -> str:
    return response.content.decode()


def served_task(response) -> LabelTask:
    return response.context["task"]


def answer(client, task, value: str, **extra):
    body = {"value": value, "served": views.signing.dumps([task.pk, time.time()], salt=views.SERVED_SALT), **extra}
    return client.post(reverse("labeling:label", args=[task.pk]), body)


@pytest.fixture
def review_required():
    class_set = digits()
    class_set.review_required = True
    class_set.save(update_fields=["review_required"])
    return class_set


# --- Who may open what ------------------------------------------------------------------------


PAGES = {"next": NEXT, "review": REVIEW, "lead": LEAD, "counts": COUNTS}
ALLOWED = {"labeler": {"next", "counts"}, "reviewer": {"review"}, "lead": {"lead"}}


@pytest.mark.parametrize("persona", ["labeler", "reviewer", "lead"])
@pytest.mark.parametrize("name", PAGES)
def test_each_page_opens_only_for_its_permission(request, persona, name):
    response = client_for(request.getfixturevalue(persona)).get(PAGES[name])
    assert response.status_code == (200 if name in ALLOWED[persona] else 403), text(response)[:500]


@pytest.mark.parametrize("name", PAGES)
def test_an_anonymous_visitor_is_sent_to_sign_in(client, name):
    response = client.get(PAGES[name])
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("name", PAGES)
def test_outsiders_and_staff_without_labeling_permissions_get_403(outsider, operator, name):
    for user in (outsider, operator):
        assert client_for(user).get(PAGES[name]).status_code == 403


def test_the_pages_need_staff_like_the_images_and_the_live_feed(django_user_model):
    everything = ("label_tasks", "review_labels", "lead_labeling")
    not_staff = client_for(staff_with(django_user_model, "nora", *everything, staff=False))
    assert [not_staff.get(url).status_code for url in (NEXT, REVIEW, LEAD)] == [403, 403, 403]


@pytest.mark.parametrize("name", PAGES)
def test_a_device_token_opens_no_labeling_page(client, device_a, name):
    response = client.get(PAGES[name], **device_a.auth)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_a_device_token_cannot_label(client, device_a):
    (task,) = tasks(1)
    response = client.post(reverse("labeling:label", args=[task.pk]), {"value": "3"}, **device_a.auth)
    assert response.status_code == 302 and not Label.objects.exists()


def test_a_labeler_cannot_administer_anything(as_labeler):
    index = as_labeler.get(reverse("admin:index"))
    assert index.status_code == 200 and index.context["app_list"] == []
    for url in ("/admin/auth/user/", "/admin/devices/device/", "/admin/labeling/labeltask/", "/admin/labeling/label/"):
        assert as_labeler.get(url).status_code in (403, 404), url


def test_the_answers_need_a_post(as_labeler):
    (task,) = tasks(1)
    for url in (reverse("labeling:label", args=[task.pk]), reverse("labeling:skip", args=[task.pk]), UNDO):
        assert as_labeler.get(url).status_code == 405


def test_a_reviewer_who_does_not_label_cannot_answer_tasks(as_reviewer):
    (task,) = tasks(1)
    assert answer(as_reviewer, task, "3").status_code == 403


# --- The next task ----------------------------------------------------------------------------


def test_the_next_task_page_shows_the_image_the_prediction_its_top_3_and_one_button_per_class(as_labeler):
    probabilities = {"7": 0.51, "1": 0.32, "9": 0.11, "4": 0.06}
    tasks(
        1,
        probabilities=probabilities,
        confidence=0.51,
        model_version="digits@3",
        source=TaskSource.DRIFT,
        image_area="drift_images",
        image_key="dev-1/sample.png",
    )
    response = as_labeler.get(NEXT)
    page = text(response)
    assert 'src="/files/drift_images/dev-1/sample.png"' in page
    assert "digits@3" in page and "Confirmed-drift sample" in page
    top = re.findall(r"<tr><th>(\w+)</th><td class=\"bar\">.*?</td><td>([\d.]+)</td></tr>", page)
    assert top == [("7", "0.510"), ("1", "0.320"), ("9", "0.110")]
    buttons = re.findall(r'<button type="submit" name="value" value="(\w+)" data-key="(\d)"', page)
    assert buttons == [(str(n), str(n)) for n in range(10)]


def test_a_prediction_image_that_arrived_after_the_task_is_shown(as_labeler, device_a):
    prediction_id = uuid.uuid4()
    tasks(1, device_id=device_a.device.pk, prediction_id=prediction_id)
    PredictionImage.objects.create(
        device=device_a.device,
        prediction_id=prediction_id,
        storage_key="late/digit.png",
        content_type="image/png",
        width=8,
        height=8,
        size=90,
    )
    assert 'src="/files/prediction_images/late/digit.png"' in text(as_labeler.get(NEXT))


def test_a_task_without_an_image_says_so(as_labeler):
    tasks(1)
    assert "no image for this sample" in text(as_labeler.get(NEXT))


def test_only_the_first_ten_classes_get_a_digit_key(as_labeler):
    letters = ClassSet.objects.create(name="letters", classes=[chr(ord("a") + n) for n in range(12)])
    tasks(1, model_version="letters@1")
    page = text(as_labeler.get(NEXT, {"class_set": "letters"}))
    assert re.findall(r'name="value" value="(\w)"', page) == list("abcdefghijkl")
    assert 'value="j" data-key="9"' in page and 'value="k">' in page and 'value="l">' in page
    assert letters.tasks.get().leased_by is not None


def test_the_class_set_filter_serves_only_its_tasks(as_labeler):
    ClassSet.objects.create(name="animals", classes=["cat", "dog"])
    (animal,) = tasks(1, model_version="animals@2", confidence=0.6)
    tasks(1, confidence=0.41)  # a digit, more uncertain: first without the filter
    assert served_task(as_labeler.get(NEXT, {"class_set": "animals"})) == animal
    assert as_labeler.get(NEXT, {"class_set": "no-such-set"}).status_code == 404


def test_a_label_is_stored_with_the_seconds_since_the_page_was_served_and_the_next_task_follows(as_labeler):
    tasks(2)
    first = served_task(as_labeler.get(NEXT))
    token = signing.dumps([first.pk, time.time() - 12.5], salt=views.SERVED_SALT)
    response = as_labeler.post(reverse("labeling:label", args=[first.pk]), {"value": "3", "served": token})
    assert response.status_code == 302 and response["Location"] == NEXT
    label = Label.objects.get()
    assert (label.task_id, label.value, label.labeled_by.username) == (first.pk, "3", "lena")
    assert 12.5 <= label.seconds < 20
    following = as_labeler.get(NEXT)
    assert served_task(following) != first and f"Task {first.pk} labeled &#x27;3&#x27;" in text(following)
    assert following.context["session_labels"] == 1 and following.context["counts"]["labels_today"] == "1"


def test_a_forged_or_foreign_served_time_stores_no_seconds(as_labeler):
    first, second = tasks(2)
    served = served_task(as_labeler.get(NEXT))
    other = second if served == first else first
    as_labeler.post(reverse("labeling:label", args=[served.pk]), {"value": "3", "served": f"[{served.pk}, 0]"})
    assert Label.objects.get().seconds is None
    served = served_task(as_labeler.get(NEXT))
    assert served == other
    foreign = signing.dumps([first.pk, time.time()], salt=views.SERVED_SALT)  # another page's
    as_labeler.post(reverse("labeling:label", args=[served.pk]), {"value": "4", "served": foreign})
    assert Label.objects.get(task=other).seconds is None


def test_the_class_set_filter_is_kept_after_an_answer(as_labeler):
    (task,) = tasks(1)
    response = answer(as_labeler, task, "3", class_set="digits")
    assert response["Location"] == f"{NEXT}?class_set=digits"


def test_a_label_outside_the_class_set_is_refused_with_a_message_and_nothing_stored(as_labeler):
    tasks(1)
    task = served_task(as_labeler.get(NEXT))
    response = answer(as_labeler, task, "cat")
    page = as_labeler.get(response["Location"])
    assert "Not stored: &#x27;cat&#x27; is not a class of digits" in text(page)
    assert not Label.objects.exists()
    assert served_task(page) == task  # still leased to the labeler, shown again


def test_a_label_on_a_task_leased_to_someone_else_is_refused(as_labeler, second_labeler):
    (task,) = tasks(1)
    services.next_task(second_labeler)
    page = as_labeler.get(answer(as_labeler, task, "3")["Location"])
    assert "Your lease on this task has expired or belongs to someone else" in text(page)
    assert not Label.objects.exists()


def test_skip_gives_the_task_back_and_serves_another_until_the_labeler_asks_again(as_labeler):
    tasks(2)
    first = served_task(as_labeler.get(NEXT))
    as_labeler.post(reverse("labeling:skip", args=[first.pk]))
    assert LabelTask.objects.get(pk=first.pk).status == TaskStatus.PENDING
    second = served_task(as_labeler.get(NEXT))
    assert second != first
    as_labeler.post(reverse("labeling:skip", args=[second.pk]))
    empty = as_labeler.get(NEXT)
    assert "Nothing to label" in text(empty) and "Show the 2 tasks I skipped again" in text(empty)
    assert as_labeler.session[views.SESSION_SKIPPED] == [second.pk, first.pk]
    as_labeler.post(reverse("labeling:unskip"))
    assert served_task(as_labeler.get(NEXT)) == first


def test_the_skipped_list_in_the_session_stays_bounded(as_labeler, monkeypatch):
    monkeypatch.setattr(views, "SKIPPED_KEPT", 3)
    for task in tasks(5):
        as_labeler.post(reverse("labeling:skip", args=[task.pk]))
    assert len(as_labeler.session[views.SESSION_SKIPPED]) == 3


def test_undo_takes_back_the_last_label_and_shows_its_task_again(as_labeler):
    tasks(3)
    first = served_task(as_labeler.get(NEXT))
    answer(as_labeler, first, "3")
    second = served_task(as_labeler.get(NEXT))
    response = as_labeler.post(UNDO, {"task": second.pk})
    assert response.status_code == 302
    page = as_labeler.get(NEXT)
    assert served_task(page) == first and f"Your label on task {first.pk} is undone" in text(page)
    assert Label.objects.get().undone_at is not None
    assert LabelTask.objects.get(pk=second.pk).status == TaskStatus.PENDING  # back in the queue
    assert page.context["session_labels"] == 0
    answer(as_labeler, first, "8")
    assert list(Label.objects.filter(undone_at=None).values_list("value", flat=True)) == ["8"]


def test_undo_with_nothing_to_undo_says_so(as_labeler):
    page = as_labeler.get(as_labeler.post(UNDO)["Location"])
    assert "Nothing to undo" in text(page)


def test_a_reviewed_label_cannot_be_undone(as_labeler, reviewer, review_required):
    tasks(1)
    answer(as_labeler, served_task(as_labeler.get(NEXT)), "3")
    services.review(reviewer, Label.objects.get().pk, accept=True)
    page = as_labeler.get(as_labeler.post(UNDO)["Location"])
    assert "Not undone: That label was already reviewed" in text(page)
    assert Label.objects.get().undone_at is None


def test_the_answers_need_their_csrf_token(labeler):
    tasks(1)
    browser = client_for(labeler, enforce_csrf_checks=True)
    page = browser.get(NEXT)
    task = served_task(page)
    url = reverse("labeling:label", args=[task.pk])
    assert browser.post(url, {"value": "3"}).status_code == 403
    assert browser.post(reverse("labeling:skip", args=[task.pk])).status_code == 403
    assert browser.post(UNDO).status_code == 403
    assert browser.post(reverse("labeling:touch", args=[task.pk])).status_code == 403
    assert not Label.objects.exists()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text(page)).group(1)
    assert browser.post(url, {"value": "3", "csrfmiddlewaretoken": token}).status_code == 302
    assert Label.objects.get().value == "3"


def test_an_empty_queue_shows_a_friendly_page(as_labeler):
    response = as_labeler.get(NEXT)
    assert response.status_code == 200
    assert "Nothing to label right now" in text(response) and "task" not in response.context


def test_the_page_keeps_its_lease_alive(as_labeler, labeler, settings):
    (task,) = tasks(1)
    as_labeler.get(NEXT)
    soon = timezone.now() + timedelta(seconds=5)
    LabelTask.objects.filter(pk=task.pk).update(lease_expires_at=soon)
    response = as_labeler.post(reverse("labeling:touch", args=[task.pk]))
    assert response.json() == {"leased": True}
    assert LabelTask.objects.get(pk=task.pk).lease_expires_at > soon + timedelta(seconds=60)


def test_touching_a_task_leased_to_someone_else_changes_nothing(as_labeler, second_labeler):
    (task,) = tasks(1)
    services.next_task(second_labeler)
    before = LabelTask.objects.get(pk=task.pk).lease_expires_at
    assert as_labeler.post(reverse("labeling:touch", args=[task.pk])).json() == {"leased": False}
    assert LabelTask.objects.get(pk=task.pk).lease_expires_at == before


def test_gold_tasks_are_served_without_giving_their_answer_away(as_labeler):
    class_set = digits()
    class_set.gold_rate = 1.0
    class_set.save(update_fields=["gold_rate"])
    (gold,) = tasks(1)
    LabelTask.objects.filter(pk=gold.pk).update(gold_label="4")
    page = as_labeler.get(NEXT, {"class_set": "digits"})
    assert served_task(page) == gold and "gold" not in text(page).lower()
    answer(as_labeler, gold, "4")
    assert Label.objects.get().task_id == gold.pk


# --- Counts -----------------------------------------------------------------------------------


def test_the_counts_show_pending_tasks_of_the_class_set_and_the_labelers_labels_today(as_labeler, second_labeler):
    ClassSet.objects.create(name="animals", classes=["cat", "dog"])
    tasks(3)
    tasks(2, model_version="animals@1")
    mine = services.next_task(second_labeler, digits())
    services.record_label(second_labeler, mine.pk, "1")
    assert as_labeler.get(COUNTS).json() == {"pending": "4", "labels_today": "0", "awaiting_review": "0"}
    assert as_labeler.get(COUNTS, {"class_set": "digits"}).json()["pending"] == "2"
    assert client_for(second_labeler).get(COUNTS).json()["labels_today"] == "1"


def test_the_live_labeling_topic_is_open_to_labelers():
    # The browser test (tests/test_browser_labeling.py) follows a count over a real socket; a
    # websocket test here would need a transactional database, whose flush drops the data
    # migration's class set for the transactional tests after it.
    from sphere.consumers import TOPIC_PERMISSIONS

    assert TOPIC_PERMISSIONS["labeling"] == "labeling.label_tasks"


def test_a_label_given_on_the_page_publishes_the_queue_counts(as_labeler, django_capture_on_commit_callbacks):
    # Through the debounced labeling.publish_counts task (run inline here: tasks are eager).
    tasks(2)
    task = served_task(as_labeler.get(NEXT))
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        answer(as_labeler, task, "3")
    [(topic, event, data)] = [call.args for call in send.call_args_list]
    assert (topic, event, data) == ("labeling", "labeling.counts", {"pending": "1", "leased": "0", "labeled": "0"})


def test_the_label_request_only_schedules_the_counts_and_counts_nothing(as_labeler, django_capture_on_commit_callbacks):
    tasks(2)
    task = served_task(as_labeler.get(NEXT))
    with (
        mock.patch("labeling.tasks.publish_counts.apply_async") as enqueue,
        django_capture_on_commit_callbacks(execute=True),
        CaptureQueriesContext(connection) as queries,
    ):
        answer(as_labeler, task, "3")
    enqueue.assert_called_once_with(countdown=services.COUNTS_DELAY_S)
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"]], [q["sql"] for q in queries]


def test_the_pages_subscribe_to_the_live_counts(as_labeler):
    tasks(1)
    for response in (as_labeler.get(NEXT), as_labeler.get(NEXT, {"class_set": "digits"})):
        page = text(response)
        assert "sphere/labeling.js" in page and "sphere/live.js" in page
        assert f'data-counts-url="{COUNTS}' in page and 'data-count="pending"' in page


# --- Review -----------------------------------------------------------------------------------


def labeled(labeler, n: int) -> list[Label]:
    made = []
    for _ in range(n):
        task = services.next_task(labeler)
        made.append(services.record_label(labeler, task.pk, "3"))
    return made


def test_the_review_queue_lists_the_oldest_live_unreviewed_labels_with_image_and_labeler(
    as_reviewer, labeler, review_required
):
    tasks(3, image_area="drift_images", image_key="d/s.png")
    first, second, third = labeled(labeler, 3)
    Label.objects.filter(pk=first.pk).update(created=timezone.now() - timedelta(hours=1))
    services.undo(labeler)  # the third: undone, no longer for review
    response = as_reviewer.get(REVIEW)
    assert [label.pk for label in response.context["labels"]] == [first.pk, second.pk]
    page = text(response)
    assert 'src="/files/drift_images/d/s.png"' in page and "by lena" in page
    assert page.count('data-key="a"') == 1 and page.count('data-key="r"') == 1  # the first card's
    assert response.context["awaiting_review"] == "2"


def test_class_sets_without_review_are_not_in_the_review_queue(as_reviewer, labeler):
    tasks(1)
    labeled(labeler, 1)
    assert as_reviewer.get(REVIEW).context["labels"] == []


def test_accepting_a_label_finishes_its_task(as_reviewer, reviewer, labeler, review_required):
    tasks(1)
    (label,) = labeled(labeler, 1)
    response = as_reviewer.post(reverse("labeling:decide", args=[label.pk]), {"decision": "accept"})
    assert response["Location"] == REVIEW
    label.refresh_from_db()
    assert (label.review, label.reviewed_by) == (ReviewStatus.ACCEPTED, reviewer)
    assert label.task.status == TaskStatus.DONE
    assert "Accepted" in text(as_reviewer.get(REVIEW))


def test_rejecting_a_label_keeps_the_note_and_returns_the_task_to_the_queue(as_reviewer, labeler, review_required):
    tasks(1)
    (label,) = labeled(labeler, 1)
    as_reviewer.post(reverse("labeling:decide", args=[label.pk]), {"decision": "reject", "note": " a 5, not a 3 "})
    label.refresh_from_db()
    assert (label.review, label.review_note) == (ReviewStatus.REJECTED, "a 5, not a 3")
    assert LabelTask.objects.get(pk=label.task_id).status == TaskStatus.PENDING


def test_a_label_reviewed_twice_or_an_unknown_decision_is_refused_with_a_message(as_reviewer, labeler, review_required):
    tasks(1)
    (label,) = labeled(labeler, 1)
    decide = reverse("labeling:decide", args=[label.pk])
    as_reviewer.post(decide, {"decision": "accept"})
    page = as_reviewer.get(as_reviewer.post(decide, {"decision": "reject"})["Location"])
    assert "Not reviewed: Only a live, unreviewed label can be reviewed." in text(page)
    page = as_reviewer.get(as_reviewer.post(decide, {"decision": "maybe"})["Location"])
    assert "neither accept nor reject" in text(page)
    label.refresh_from_db()
    assert label.review == ReviewStatus.ACCEPTED


def test_reviewing_needs_the_review_permission_and_a_csrf_token(labeler, reviewer, review_required):
    tasks(1)
    (label,) = labeled(labeler, 1)
    decide = reverse("labeling:decide", args=[label.pk])
    assert client_for(labeler).post(decide, {"decision": "accept"}).status_code == 403
    assert client_for(reviewer, enforce_csrf_checks=True).post(decide, {"decision": "accept"}).status_code == 403
    label.refresh_from_db()
    assert label.review == ReviewStatus.UNREVIEWED


# --- Lead ---------------------------------------------------------------------------------------


def add_label(task, user, value, *, seconds=None, review=ReviewStatus.UNREVIEWED, days_ago=0, undone=False):
    return Label.objects.create(
        task=task,
        value=value,
        labeled_by=user,
        seconds=seconds,
        review=review,
        created=timezone.now() - timedelta(days=days_ago, minutes=1),
        undone_at=timezone.now() if undone else None,
    )


def test_the_lead_page_shows_each_labelers_count_throughput_gold_accuracy_agreement_and_acceptance(
    django_user_model, lead, labeler, second_labeler
):
    gold = tasks(4)
    for task, answer_ in zip(gold, "1234", strict=True):
        LabelTask.objects.filter(pk=task.pk).update(gold_label=answer_)
    for task, value in zip(gold, "1234", strict=True):
        add_label(task, labeler, value, seconds=30)
    for task, value in zip(gold, "1299", strict=True):
        add_label(task, second_labeler, value, seconds=60)
    (plain,) = tasks(1)
    add_label(plain, labeler, "5", seconds=60, review=ReviewStatus.ACCEPTED)
    add_label(plain, labeler, "6", seconds=60, review=ReviewStatus.REJECTED)
    add_label(plain, labeler, "7", seconds=999, undone=True)  # undone: not counted
    add_label(plain, labeler, "8", seconds=999, days_ago=10)  # outside the default 7 days
    response = client_for(lead).get(LEAD)
    rows = {row.labeler: row for row in response.context["labelers"]}
    lena, liam = rows["lena"], rows["liam"]
    assert (lena.labels, liam.labels) == (6, 4)
    assert lena.throughput == pytest.approx(6 / (240 / 3600)) and liam.throughput == pytest.approx(60)
    assert (lena.gold_accuracy, liam.gold_accuracy) == (1.0, 0.5)
    # kappa of 1234 vs 1299: observed 0.5, expected (1·1 + 1·1 + 0 + 0 ... ) / 16 = 2/16
    assert lena.kappa == pytest.approx((0.5 - 2 / 16) / (1 - 2 / 16)) == liam.kappa
    assert (lena.acceptance, lena.reviewed, liam.acceptance) == (0.5, 2, None)
    page = text(response)
    lena_row = re.search(r'<tr data-labeler="lena">(.*?)</tr>', page, re.S).group(1)
    assert '<td class="num" data-field="labels">6</td>' in lena_row
    assert '<td class="num" data-field="throughput">90.0</td>' in lena_row
    assert "100% <span" in lena_row and "0.43 <span" in lena_row and "50% <span" in lena_row
    assert rows.keys() == {"lena", "liam"}
    month = client_for(lead).get(LEAD, {"days": "30"}).context["labelers"]
    assert {row.labeler: row.labels for row in month} == {"lena": 7, "liam": 4}


def test_the_lead_page_period_is_bounded_and_defaults_to_a_week(lead):
    client = client_for(lead)
    assert [client.get(LEAD, {"days": days}).context["days"] for days in ("", "x", "0", "3", "9999")] == [
        7,
        7,
        7,
        3,
        90,
    ]


# --- Links to the admin ------------------------------------------------------------------------


def task_in_admin(task_id: int) -> str:
    return reverse("admin:labeling_labeltask_change", args=[task_id])


@pytest.mark.parametrize("admin_permission", ["view_labeltask", "change_labeltask"])
def test_staff_who_may_open_tasks_in_the_admin_get_a_link_to_the_task_they_label(django_user_model, admin_permission):
    (task,) = tasks(1)
    client = client_for(staff_with(django_user_model, "tess", "label_tasks", admin_permission))
    response = client.get(NEXT)
    assert served_task(response).pk == task.pk
    link = task_in_admin(task.pk)
    assert f'<a class="admin-link" href="{link}">task {task.pk} in the admin</a>' in text(response)
    assert client.get(link).status_code == 200


def test_a_labeler_without_admin_permission_sees_no_link_to_the_admin(as_labeler):
    (task,) = tasks(1)
    page = text(as_labeler.get(NEXT))
    assert task_in_admin(task.pk) not in page and "/admin/labeling/" not in page
    assert as_labeler.get(task_in_admin(task.pk)).status_code in (403, 404)


def test_the_review_queue_links_each_task_to_the_admin_for_reviewers_who_may_open_tasks(
    django_user_model, as_reviewer, labeler, review_required
):
    tasks(2)
    first, second = labeled(labeler, 2)
    staff_reviewer = client_for(staff_with(django_user_model, "ruby", "review_labels", "view_labeltask"))
    page = text(staff_reviewer.get(REVIEW))
    for label in (first, second):
        assert f'<a href="{task_in_admin(label.task_id)}" title="in the admin">task {label.task_id}</a>' in page
    plain = text(as_reviewer.get(REVIEW))
    assert f"task {first.task_id} · digits" in plain and "/admin/labeling/" not in plain


def test_the_lead_page_links_to_the_class_sets_tasks_and_labels_in_the_admin(django_user_model, lead):
    admin_lead = client_for(
        staff_with(django_user_model, "lara", "lead_labeling", "change_classset", "view_labeltask", "view_label")
    )
    page = text(admin_lead.get(LEAD))
    links = {
        "admin:labeling_classset_changelist": "edit class sets in the admin",
        "admin:labeling_labeltask_changelist": "label tasks in the admin",
        "admin:labeling_label_changelist": "labels in the admin",
    }
    for name, words in links.items():
        assert f'<a class="admin-link" href="{reverse(name)}">{words}</a>' in page, name
        assert admin_lead.get(reverse(name)).status_code == 200, name
    assert "/admin/labeling/" not in text(client_for(lead).get(LEAD))  # the lead alone may open none of them


# --- Cost ---------------------------------------------------------------------------------------


def queue_of(n: int) -> None:
    LabelTask.objects.bulk_create(
        LabelTask(
            key=f"bulk:{i}",
            source=TaskSource.UNCERTAIN,
            class_set=digits(),
            model_version="digits@1",
            predicted_label="7",
            confidence=0.5,
            probabilities={"7": 0.5, "1": 0.3},
            priority=i / n,
            image_area="drift_images",
            image_key=f"k/{i}.png",
        )
        for i in range(n)
    )


# Session, user, permissions (2); the labeler's current lease, expired leases back, the claim
# (savepoint, select, update, release) and the claimed task; class sets, the counts (pending, today,
# awaiting review); the session saved. A few to spare, none per pending task.
NEXT_PAGE_QUERIES = 18


def test_the_next_task_page_costs_a_fixed_number_of_queries_on_a_long_queue(as_labeler, django_assert_max_num_queries):
    queue_of(1000)
    as_labeler.get(NEXT)  # the first lease
    with django_assert_max_num_queries(NEXT_PAGE_QUERIES):
        response = as_labeler.get(NEXT, {"class_set": "digits"})
    assert response.context["task"].key == "bulk:999" and response.context["counts"]["pending"] == "999"
    first = response.context["task"]
    answer(as_labeler, first, "3", class_set="digits")
    with django_assert_max_num_queries(NEXT_PAGE_QUERIES):
        response = as_labeler.get(NEXT, {"class_set": "digits"})  # a fresh claim on the long queue
    assert response.context["task"].key == "bulk:998"


def test_the_review_page_costs_a_fixed_number_of_queries(
    as_reviewer, labeler, review_required, device_a, django_assert_max_num_queries
):
    tasks(25, device_id=device_a.device.pk, prediction_id=uuid.uuid4())
    labeled(labeler, 25)
    # Session, user, permissions (2), the labels with tasks/class sets/labelers/devices, the late
    # images, the capped count.
    with django_assert_max_num_queries(8):
        response = as_reviewer.get(REVIEW)
    assert len(response.context["labels"]) == 20
