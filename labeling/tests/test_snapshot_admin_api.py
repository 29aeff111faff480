"""The labeling admin (class sets editable, the queue read-only and big-table safe, snapshots
created and exported by actions, never edited) and the snapshot API (operators' sessions with
model permissions; devices, outsiders and anonymous callers refused)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from labeling.models import (
    ClassSet,
    DatasetSnapshot,
    ExportStatus,
    Label,
    LabelTask,
    SnapshotItem,
    SnapshotRequest,
    TaskStatus,
)
from labeling.snapshots import create_snapshot
from labeling.tests.factories import digits, tasks
from labeling.tests.test_snapshots import answer

pytestmark = pytest.mark.django_db

SNAPSHOTS = "/api/v1/snapshots/"
REQUESTS = "/api/v1/snapshot-requests/"
CURATOR_PERMISSIONS = [
    "view_classset",
    "change_classset",
    "view_labeltask",
    "view_label",
    "view_datasetsnapshot",
    "add_datasetsnapshot",
    "change_datasetsnapshot",
    "view_snapshotitem",
    "label_tasks",
]


def staff_with(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="labeling", codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def curator(django_user_model):
    """Staff who makes and exports datasets."""
    return staff_with(django_user_model, "cora", *CURATOR_PERMISSIONS)


@pytest.fixture
def viewer(django_user_model):
    """Staff who may only read snapshots."""
    return staff_with(django_user_model, "vic", "view_datasetsnapshot")


def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def curator_api(curator):
    return logged_in(APIClient(), curator)


@pytest.fixture
def labeled(curator):
    """Three labeled tasks, one with an image, and one still pending."""
    first, second, third, _pending = tasks(4)
    key = f"samples/{first.pk}.png"
    storages["drift_images"].save(key, ContentFile(b"\x89PNG\r\n\x1a\n"))
    LabelTask.objects.filter(pk=first.pk).update(image_area="drift_images", image_key=key)
    for task, value in ((first, "1"), (second, "2"), (third, "2")):
        answer(curator, task, value)
    return [first, second, third]


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def changelist(model_name: str) -> str:
    return reverse(f"admin:labeling_{model_name}_changelist")


def change(model_name: str, pk) -> str:
    return reverse(f"admin:labeling_{model_name}_change", args=[pk])


# --- Admin: class sets ------------------------------------------------------------------------


def class_set_form(**overrides) -> dict:
    return {
        "name": "letters",
        "classes": '["a", "b"]',
        "gold_rate": "0",
        "audit_rate": "0",
        **overrides,
    }


def test_a_class_set_is_edited_in_the_admin_and_its_classes_validated(client, django_user_model):
    admin = logged_in(client, django_user_model.objects.create_superuser("ada", "ada@example.invalid", "pw-ada-123"))

    refused = admin.post(reverse("admin:labeling_classset_add"), class_set_form(classes='["a", "a"]'))
    assert refused.status_code == 200 and b"Class names must be unique." in refused.content
    refused = admin.post(reverse("admin:labeling_classset_add"), class_set_form(classes='"abc"'))
    assert b"Must be a non-empty list of class names" in refused.content

    saved = admin.post(reverse("admin:labeling_classset_add"), class_set_form(review_required="on"))
    assert saved.status_code == 302, saved.content[:2000]
    letters = ClassSet.objects.get(name="letters")
    assert letters.classes == ["a", "b"] and letters.review_required


def test_the_snapshot_action_queues_the_next_version_and_its_request_says_when_nothing_changed(
    client, curator, labeled, django_capture_on_commit_callbacks
):
    admin = logged_in(client, curator)
    action = {"action": "snapshot", "_selected_action": [digits().pk]}

    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = admin.post(changelist("classset"), action, follow=True)
    assert not DatasetSnapshot.objects.exists()  # nothing built in the request
    request = SnapshotRequest.objects.get()
    assert messages_of(first)[-1] == (
        f'Queued a snapshot of digits (<a href="{change("snapshotrequest", request.pk)}">request {request.pk}</a>): '
        "it joins the snapshots once built."
    )
    for callback in queued:
        callback()  # the labeling.create_snapshot task (eager)
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(changelist("classset"), action)

    first_request, second_request = SnapshotRequest.objects.order_by("pk")
    assert (first_request.status, second_request.status) == ("done", "done")
    assert "digits v1: 3 item(s)." in admin.get(change("snapshotrequest", first_request.pk)).content.decode()
    page = admin.get(change("snapshotrequest", second_request.pk)).content.decode()
    assert "digits v2: 3 item(s). Same content as v1: no label changed since." in page
    snapshot = DatasetSnapshot.objects.get(version=2)
    assert snapshot.created_by == curator and snapshot.parent.version == 1 and second_request.snapshot == snapshot


def test_the_snapshot_requests_list_in_the_admin_for_those_who_see_snapshots(client, curator, viewer, outsider):
    SnapshotRequest.objects.create(class_set=digits(), requested_by=curator, note="n")
    listing = logged_in(client, viewer).get(changelist("snapshotrequest"))
    assert listing.status_code == 200 and len(listing.context["cl"].result_list) == 1
    assert client.get(reverse("admin:labeling_snapshotrequest_add")).status_code == 403
    client.force_login(staff_with(get_user_model(), "nobody"))
    assert client.get(changelist("snapshotrequest")).status_code == 403


def test_without_the_add_permission_there_is_no_snapshot_action(client, django_user_model):
    admin = logged_in(client, staff_with(django_user_model, "carl", "view_classset", "change_classset"))
    response = admin.get(changelist("classset"))
    form = response.context["action_form"]
    assert response.status_code == 200 and (form is None or "snapshot" not in dict(form.fields["action"].choices))
    admin.post(changelist("classset"), {"action": "snapshot", "_selected_action": [digits().pk]})
    assert not DatasetSnapshot.objects.exists()


# --- Admin: tasks and labels ------------------------------------------------------------------


def test_the_task_list_shows_status_source_class_set_priority_and_a_thumbnail(client, curator, labeled):
    response = logged_in(client, curator).get(changelist("labeltask"))
    assert response.status_code == 200
    page = response.content.decode()
    first = labeled[0]
    assert f'src="/files/drift_images/samples/{first.pk}.png?thumb=1"' in page
    for text in ("Done", "Uncertain prediction", "digits", "Pending"):
        assert text in page


def test_tasks_are_found_by_exact_key_or_number(client, curator, labeled):
    admin = logged_in(client, curator)
    first = LabelTask.objects.get(pk=labeled[0].pk)
    by_key = admin.get(changelist("labeltask"), {"q": first.key})
    by_number = admin.get(changelist("labeltask"), {"q": str(first.pk)})
    by_part = admin.get(changelist("labeltask"), {"q": first.key[:8]})
    assert [task.pk for task in by_key.context["cl"].result_list] == [first.pk]
    assert [task.pk for task in by_number.context["cl"].result_list] == [first.pk]
    assert list(by_part.context["cl"].result_list) == []  # no scan for a fragment


def test_pending_tasks_of_one_class_set_list_in_queue_order(client, curator):
    low, high = tasks(1, confidence=0.69)[0], tasks(1, confidence=0.41)[0]
    params = {"status__exact": "pending", "class_set__id__exact": digits().pk}
    response = logged_in(client, curator).get(changelist("labeltask"), params)
    assert [task.pk for task in response.context["cl"].result_list] == [high.pk, low.pk]


@pytest.mark.parametrize("model_name", ["labeltask", "label", "snapshotitem"])
def test_the_big_lists_cost_the_same_for_3_or_30_rows_and_never_count_the_whole_table(client, curator, model_name):
    admin = logged_in(client, curator)

    def grow(n):
        for task in tasks(n):
            answer(curator, task, "4")
        create_snapshot(digits())

    grow(3)
    with CaptureQueriesContext(connection) as small:
        assert admin.get(changelist(model_name)).status_code == 200
    grow(27)
    with CaptureQueriesContext(connection) as large:
        response = admin.get(changelist(model_name))
    assert len(response.context["cl"].result_list) >= 30
    assert len(small) == len(large), [q["sql"] for q in large.captured_queries]
    counts = [q["sql"] for q in large.captured_queries if "COUNT(" in q["sql"].upper()]
    assert all("LIMIT" in sql.upper() for sql in counts if model_name in sql.lower()), counts


def test_tasks_and_labels_are_read_only_in_the_admin(client, curator, labeled):
    admin = logged_in(client, curator)
    task = labeled[0]
    page = admin.get(change("labeltask", task.pk))
    assert page.status_code == 200 and b"samples/" in page.content
    admin.post(change("labeltask", task.pk), {"status": "pending", "priority": "9"})
    assert LabelTask.objects.get(pk=task.pk).status == TaskStatus.DONE
    label = Label.objects.filter(task=task).get()
    assert admin.get(change("label", label.pk)).status_code == 200
    assert admin.get(reverse("admin:labeling_label_add")).status_code == 403
    filtered = admin.get(changelist("label"), {"origin__exact": "labeler", "review__exact": "not_needed"})
    assert len(filtered.context["cl"].result_list) == 3


# --- Admin: snapshots -------------------------------------------------------------------------


def test_the_snapshot_page_shows_counts_hash_export_and_a_download_link(
    client, curator, labeled, django_capture_on_commit_callbacks
):
    admin = logged_in(client, curator)
    snapshot = create_snapshot(digits())
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(changelist("datasetsnapshot"), {"action": "export", "_selected_action": [snapshot.pk]})
    assert response.status_code == 302
    snapshot.refresh_from_db()
    assert snapshot.export_status == ExportStatus.DONE

    page = admin.get(change("datasetsnapshot", snapshot.pk)).content.decode()
    assert snapshot.content_hash in page and "3 item(s)" in page and "&quot;2&quot;: 2" in page
    assert f'href="/files/artifacts/{snapshot.export_key}"' in page
    listing = admin.get(changelist("datasetsnapshot")).content.decode()
    assert "Done" in listing and f'href="/files/artifacts/{snapshot.export_key}"' in listing


def test_exporting_again_is_skipped_with_a_message(client, curator, labeled, django_capture_on_commit_callbacks):
    admin = logged_in(client, curator)
    snapshot = create_snapshot(digits())
    action = {"action": "export", "_selected_action": [snapshot.pk]}
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(changelist("datasetsnapshot"), action)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = admin.post(changelist("datasetsnapshot"), action, follow=True)
    assert callbacks == [] and messages_of(again)[-1] == "Skipped 1 snapshot(s) already exported or exporting."


def test_a_snapshot_and_its_items_cannot_be_edited_or_deleted_in_the_admin(client, curator, labeled):
    admin = logged_in(client, curator)
    snapshot = create_snapshot(digits())
    item = snapshot.items.first()
    assert admin.get(reverse("admin:labeling_datasetsnapshot_add")).status_code == 403
    admin.post(change("datasetsnapshot", snapshot.pk), {"note": "edited"})
    assert DatasetSnapshot.objects.get(pk=snapshot.pk).note == ""
    assert admin.get(change("snapshotitem", item.pk)).status_code == 200
    listed = admin.get(changelist("snapshotitem"), {"snapshot__id__exact": snapshot.pk}).context["cl"].result_list
    assert sorted(listed, key=lambda row: row.task_id) == list(snapshot.items.order_by("task_id"))
    admin.post(change("snapshotitem", item.pk), {"label": "9"})
    assert SnapshotItem.objects.get(pk=item.pk).label == item.label
    assert admin.post(reverse("admin:labeling_snapshotitem_delete", args=[item.pk])).status_code == 403
    assert admin.post(reverse("admin:labeling_datasetsnapshot_delete", args=[snapshot.pk])).status_code == 403


def test_a_superuser_deletes_a_leaf_snapshot_but_not_a_parent(client, django_user_model, labeled):
    admin = logged_in(client, django_user_model.objects.create_superuser("ada", "ada@example.invalid", "pw-ada-123"))
    parent = create_snapshot(digits())
    leaf = create_snapshot(digits())

    refused = admin.post(reverse("admin:labeling_datasetsnapshot_delete", args=[parent.pk]), {"post": "yes"})
    confirm = admin.get(reverse("admin:labeling_datasetsnapshot_delete", args=[leaf.pk]))
    deleted = admin.post(reverse("admin:labeling_datasetsnapshot_delete", args=[leaf.pk]), {"post": "yes"})

    assert refused.status_code == 200 and b"digits v2" in refused.content  # "protected: its child"
    assert b"digits v2 and its 3 item(s)" in confirm.content
    assert deleted.status_code == 302
    assert list(DatasetSnapshot.objects.values_list("version", flat=True)) == [1]
    assert SnapshotItem.objects.filter(snapshot_id=leaf.pk).count() == 0


def test_the_download_link_opens_the_archive_for_those_who_may_see_snapshots(
    client, curator, outsider, labeled, django_capture_on_commit_callbacks
):
    snapshot = create_snapshot(digits())
    with django_capture_on_commit_callbacks(execute=True):
        logged_in(client, curator).post(
            changelist("datasetsnapshot"), {"action": "export", "_selected_action": [snapshot.pk]}
        )
    snapshot.refresh_from_db()
    url = f"/files/artifacts/{snapshot.export_key}"
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    body = b"".join(response.streaming_content)
    assert len(body) == snapshot.export_size
    client.force_login(outsider)
    assert client.get(url).status_code == 403


# --- API --------------------------------------------------------------------------------------


def test_operators_list_and_read_snapshots_with_their_export_link(
    curator_api, labeled, django_capture_on_commit_callbacks
):
    first = create_snapshot(digits())
    second = create_snapshot(digits(), note="again")
    with django_capture_on_commit_callbacks(execute=True):
        curator_api.post(f"{SNAPSHOTS}{second.pk}/export/")

    listing = curator_api.get(SNAPSHOTS)
    detail = curator_api.get(f"{SNAPSHOTS}{second.pk}/")

    assert listing.status_code == 200, listing.content
    assert [row["version"] for row in listing.json()["results"]] == [2, 1]
    body = detail.json()
    assert body["class_set"] == "digits" and body["parent"] == first.pk and body["parent_version"] == 1
    assert body["item_count"] == 3 and body["class_counts"]["2"] == 2 and body["same_content_as_parent"]
    assert body["export_status"] == "done" and len(body["export_sha256"]) == 64
    assert body["download_url"] == "http://testserver/files/artifacts/snapshots/digits/v2.tar.gz"
    assert curator_api.get(SNAPSHOTS, {"class_set": "nothing"}).json()["results"] == []


def test_the_snapshot_list_runs_a_pinned_number_of_queries(curator_api, labeled):
    create_snapshot(digits())
    with CaptureQueriesContext(connection) as few:
        curator_api.get(SNAPSHOTS)
    for _ in range(5):
        create_snapshot(digits())
    with CaptureQueriesContext(connection) as more:
        response = curator_api.get(SNAPSHOTS)
    assert len(response.json()["results"]) == 6
    assert len(few) == len(more), [q["sql"] for q in more.captured_queries]


def test_an_operator_asks_for_a_snapshot_polls_it_and_learns_when_it_repeats_the_last_one(
    curator, curator_api, labeled, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        created = curator_api.post(SNAPSHOTS, {"class_set": "digits", "note": "for digits@4"}, format="json")
    assert created.status_code == 202, created.content
    body = created.json()
    assert created["Location"] == f"http://testserver{REQUESTS}{body['id']}/"
    assert (body["status"], body["class_set"], body["note"], body["requested_by"]) == (
        "pending",
        "digits",
        "for digits@4",
        "cora",
    )
    assert body["snapshot"] is None and not DatasetSnapshot.objects.exists()

    for callback in queued:
        callback()  # the worker builds it
    polled = curator_api.get(created["Location"])
    assert polled.status_code == 200 and polled.json()["status"] == "done", polled.content
    snapshot = curator_api.get(polled.json()["snapshot_url"]).json()
    assert (snapshot["version"], snapshot["item_count"], snapshot["note"], snapshot["created_by"]) == (
        1,
        3,
        "for digits@4",
        "cora",
    )
    assert not snapshot["same_content_as_parent"] and snapshot["export_status"] == "" and not snapshot["download_url"]

    with django_capture_on_commit_callbacks(execute=True):
        repeated = curator_api.post(SNAPSHOTS, {"class_set": "digits"}, format="json")
    assert repeated.status_code == 202
    again = curator_api.get(curator_api.get(repeated["Location"]).json()["snapshot_url"]).json()
    assert again["version"] == 2 and again["same_content_as_parent"]


def test_a_failed_snapshot_request_says_why(curator_api, labeled, monkeypatch, django_capture_on_commit_callbacks):
    def broken(*args, **kwargs):
        raise ValueError("the disk is on fire")

    monkeypatch.setattr("labeling.snapshots._write_items", broken)
    with django_capture_on_commit_callbacks(execute=True):
        created = curator_api.post(SNAPSHOTS, {"class_set": "digits"}, format="json")
    polled = curator_api.get(created["Location"]).json()
    assert polled["status"] == "failed" and polled["error"] == "ValueError: the disk is on fire"
    assert polled["snapshot"] is None and not DatasetSnapshot.objects.exists()


def test_snapshot_requests_are_read_with_the_snapshot_view_permission_only(
    curator, viewer, operator, outsider_api, api, device_a
):
    request = SnapshotRequest.objects.create(class_set=digits(), requested_by=curator)
    url = f"{REQUESTS}{request.pk}/"
    assert logged_in(APIClient(), viewer).get(url).status_code == 200
    assert logged_in(APIClient(), viewer).get(REQUESTS).json()["results"][0]["id"] == request.pk
    refused = [(logged_in(APIClient(), operator), {}), (outsider_api, {}), (api, {}), (api, device_a.auth)]
    for client, headers in refused:
        response = client.get(url, **headers)
        assert response.status_code in (401, 403), response.content
    assert logged_in(APIClient(), viewer).delete(url).status_code == 405


@pytest.mark.parametrize(
    "body",
    [{"class_set": "unknown"}, {"note": "no class set"}, {"class_set": "digits", "note": 5}, {"class_set": ["digits"]}],
)
def test_a_malformed_create_is_refused_with_the_reason(curator_api, body):
    response = curator_api.post(SNAPSHOTS, body, format="json")
    assert response.status_code == 400, response.content
    assert not DatasetSnapshot.objects.exists()


def test_export_over_the_api_is_queued_once(curator_api, labeled, django_capture_on_commit_callbacks):
    snapshot = create_snapshot(digits())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        queued = curator_api.post(f"{SNAPSHOTS}{snapshot.pk}/export/")
        again = curator_api.post(f"{SNAPSHOTS}{snapshot.pk}/export/")
    assert queued.status_code == 202 and queued.json()["export_status"] == "pending"
    assert again.status_code == 202 and len(callbacks) == 2  # pending is queued again; the task runs once
    for callback in callbacks:
        callback()
    snapshot.refresh_from_db()
    assert snapshot.export_status == ExportStatus.DONE
    done = curator_api.post(f"{SNAPSHOTS}{snapshot.pk}/export/")
    assert done.status_code == 200 and done.json()["export_status"] == "done"


def test_snapshots_cannot_be_edited_or_deleted_over_the_api(curator_api, labeled):
    snapshot = create_snapshot(digits())
    url = f"{SNAPSHOTS}{snapshot.pk}/"
    for method in ("put", "patch"):
        response = getattr(curator_api, method)(url, {"note": "x"}, format="json")
        assert response.status_code == 405, (method, response.content)
    # DRF checks the (absent) delete permission before it looks the method up.
    assert curator_api.delete(url).status_code == 403
    assert curator_api.get(f"{url}export/").status_code == 405
    assert DatasetSnapshot.objects.get(pk=snapshot.pk).note == ""


def test_reading_needs_the_view_permission_creating_add_and_exporting_change(
    client, viewer, operator, labeled, django_user_model
):
    snapshot = create_snapshot(digits())
    reader = logged_in(APIClient(), viewer)
    assert reader.get(SNAPSHOTS).status_code == 200
    assert reader.post(SNAPSHOTS, {"class_set": "digits"}, format="json").status_code == 403
    assert reader.post(f"{SNAPSHOTS}{snapshot.pk}/export/").status_code == 403
    fleet_operator = logged_in(APIClient(), operator)  # devices' permissions only
    assert fleet_operator.get(SNAPSHOTS).status_code == 403
    assert fleet_operator.get(f"{SNAPSHOTS}{snapshot.pk}/").status_code == 403
    exporter = logged_in(APIClient(), staff_with(django_user_model, "eve", "change_datasetsnapshot"))
    assert exporter.post(f"{SNAPSHOTS}{snapshot.pk}/export/").status_code == 202


def test_outsiders_devices_and_anonymous_callers_are_refused(outsider_api, api, device_a, labeled):
    snapshot = create_snapshot(digits())
    for client, headers in ((outsider_api, {}), (api, {}), (api, device_a.auth)):
        listing = client.get(SNAPSHOTS, **headers)
        created = client.post(SNAPSHOTS, {"class_set": "digits"}, format="json", **headers)
        exported = client.post(f"{SNAPSHOTS}{snapshot.pk}/export/", **headers)
        for response in (listing, created, exported):
            assert response.status_code in (401, 403), response.content
    assert outsider_api.get(SNAPSHOTS).status_code == 403
    assert api.get(SNAPSHOTS, **device_a.auth).status_code == 403
    assert DatasetSnapshot.objects.count() == 1
    assert snapshot.items.count() == 3


def test_an_operator_queues_chosen_prediction_logs_from_their_admin(client, django_user_model, device_a):
    import uuid

    from django.contrib.auth.models import Permission
    from django.utils import timezone

    from devices.models import PredictionLog

    user = django_user_model.objects.create_user("pat", password="pw-pat-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_predictionlog", "add_labeltask"]))
    logs = [
        PredictionLog.objects.create(
            device=device_a.device,
            client_id=uuid.uuid4(),
            created=timezone.now(),
            model_version="digits@1",
            label="7",
            confidence=0.9,
        )
        for _ in range(2)
    ]
    client.force_login(user)
    url = reverse("admin:devices_predictionlog_changelist")
    client.post(url, {"action": "queue_for_labeling", "_selected_action": [log.pk for log in logs]})
    assert LabelTask.objects.filter(source="manual").count() == 2


def test_recomputing_priorities_from_the_class_set_admin_is_queued(
    client, django_user_model, settings, django_capture_on_commit_callbacks
):
    tasks(2)
    LabelTask.objects.update(priority=0)
    settings.LABELING_UNCERTAINTY = "margin"
    lead = staff_with(django_user_model, "ray", "view_classset", "change_labeltask")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = logged_in(client, lead).post(
            changelist("classset"), {"action": "recompute_priorities", "_selected_action": [digits().pk]}, follow=True
        )
    assert messages_of(answer)[-1] == "Queued the rescoring of the pending tasks of digits."
    assert all(task.priority == 0 for task in LabelTask.objects.all())  # not in the request
    for callback in queued:
        callback()  # labeling.recompute_priorities
    assert all(task.priority > 0 for task in LabelTask.objects.all())
