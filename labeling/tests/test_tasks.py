"""Labeling's background work: live counts debounced off the request path, snapshots built by a
task from a request row, exports retried on transient errors and recovered when stuck, archives
deleted with their snapshot, and priorities recomputed when the registry promotes a version."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from celery.canvas import Signature
from celery.exceptions import Retry
from django.core.cache import cache
from django.core.files.storage import FileSystemStorage, storages
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from labeling import export, queue, services, snapshots, tasks
from labeling.models import (
    ClassSet,
    DatasetSnapshot,
    ExportStatus,
    LabelTask,
    SnapshotRequest,
    SnapshotRequestStatus,
    TaskStatus,
)
from labeling.snapshots import create_snapshot, request_snapshot
from labeling.tests.factories import digits, user_with
from labeling.tests.factories import tasks as make_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def lena(django_user_model):
    return user_with(django_user_model, "lena", "label_tasks")


def label_next(user, value: str = "3") -> LabelTask:
    task = services.next_task(user)
    services.record_label(user, task.pk, value)
    return task


# --- Live counts, debounced -------------------------------------------------------------------


@pytest.fixture
def enqueued():
    """The labeling.publish_counts messages sent (not run)."""
    with mock.patch.object(tasks.publish_counts, "apply_async") as apply_async:
        yield apply_async


def test_a_burst_of_labels_schedules_one_count_a_second_later(lena, enqueued, django_capture_on_commit_callbacks):
    make_tasks(5)
    with django_capture_on_commit_callbacks(execute=True):
        for value in "12345":
            label_next(lena, value)
    enqueued.assert_called_once_with(countdown=services.COUNTS_DELAY_S)


def test_the_count_sees_the_whole_burst_and_the_next_change_schedules_the_next_one(
    lena, enqueued, django_capture_on_commit_callbacks
):
    make_tasks(4)
    with django_capture_on_commit_callbacks(execute=True):
        label_next(lena)
        label_next(lena)
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        tasks.publish_counts()  # what the worker runs a second after the first label
    [(topic, event, data)] = [call.args for call in send.call_args_list]
    assert (topic, event, data) == ("labeling", "labeling.counts", {"pending": "2", "leased": "0", "labeled": "0"})

    with django_capture_on_commit_callbacks(execute=True):
        label_next(lena)
    assert enqueued.call_count == 2


def test_nothing_is_scheduled_before_the_answer_commits(lena, enqueued, django_capture_on_commit_callbacks):
    make_tasks(1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        label_next(lena)
    assert not enqueued.called and cache.get(services.COUNTS_DIRTY_KEY) is None
    for callback in callbacks:
        callback()
    assert enqueued.called and cache.get(services.COUNTS_DIRTY_KEY) == 1


def test_a_broker_that_is_down_never_fails_the_label_and_the_next_change_tries_again(
    lena, enqueued, django_capture_on_commit_callbacks
):
    make_tasks(2)
    enqueued.side_effect = ConnectionError("broker down")
    with django_capture_on_commit_callbacks(execute=True):
        first = label_next(lena)
    assert LabelTask.objects.get(pk=first.pk).status == TaskStatus.DONE
    enqueued.side_effect = None
    with django_capture_on_commit_callbacks(execute=True):
        label_next(lena)
    assert enqueued.call_count == 2


def test_other_changes_of_the_queue_are_debounced_too(lena, enqueued, django_capture_on_commit_callbacks):
    make_tasks(2)
    with django_capture_on_commit_callbacks(execute=True):
        label_next(lena)
        services.undo(lena)
        services.release_expired_leases(now=timezone.now() + timedelta(days=1))
    enqueued.assert_called_once()


def test_recording_a_label_reads_the_task_and_writes_two_rows_nothing_more(
    lena, enqueued, django_capture_on_commit_callbacks
):
    make_tasks(3)
    task = services.next_task(lena)
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as queries:
        services.record_label(lena, task.pk, "4")
    statements = [q["sql"] for q in queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
    assert len(statements) == 3, statements  # the task (locked), INSERT label, UPDATE task
    read = statements[0]
    assert "COUNT(" not in " ".join(statements)
    assert '"features"' not in read and '"probabilities"' not in read  # kilobytes never used
    assert "ORDER BY" not in read
    if connection.vendor == "postgresql":
        # Only the task's row: not the class set's, which a snapshot holds for its whole run.
        assert read.endswith('FOR NO KEY UPDATE OF "labeling_labeltask"'), read


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_labels_are_recorded_while_a_snapshot_of_their_class_set_is_being_built(django_user_model):
    lena = user_with(django_user_model, "lena", "label_tasks")
    make_tasks(1)
    task = services.next_task(lena)
    recorded = threading.Event()

    def label():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '5s'")
            services.record_label(lena, task.pk, "2")
            recorded.set()
        finally:
            connection.close()

    with transaction.atomic():
        ClassSet.objects.select_for_update().get(pk=digits().pk)  # what create_snapshot holds
        worker = threading.Thread(target=label)
        worker.start()
        assert recorded.wait(10), "record_label waited for the class set's lock"
    worker.join()
    assert LabelTask.objects.get(pk=task.pk).status == TaskStatus.DONE


@pytest.mark.redis
def test_with_redis_a_burst_of_labels_leaves_one_delayed_message_on_the_broker(
    lena, no_eager, django_capture_on_commit_callbacks
):
    import json

    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("default")
    make_tasks(5)
    with django_capture_on_commit_callbacks(execute=True):
        for value in "12345":
            label_next(lena, value)
    messages = [json.loads(raw) for raw in client.lrange("default", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["labeling.publish_counts"]
    assert messages[0]["headers"]["eta"] is not None
    client.delete("default")


@pytest.fixture
def no_eager():
    from sphere.celery import app

    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = True


# --- Snapshots built by a task ----------------------------------------------------------------


@pytest.fixture
def labeled(lena):
    for value in "123":
        (task,) = make_tasks(1)
        LabelTask.objects.filter(pk=task.pk).update(
            status=TaskStatus.LEASED, leased_by=lena, lease_expires_at=timezone.now() + timedelta(minutes=5)
        )
        services.record_label(lena, task.pk, value)


def test_a_requested_snapshot_is_built_after_commit_once_however_often_its_message_comes(
    lena, labeled, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        request = request_snapshot(digits(), by=lena, note="for digits@2")
    assert len(queued) == 1 and not DatasetSnapshot.objects.exists()

    assert tasks.create_snapshot(request.pk) == "done"
    assert tasks.create_snapshot(request.pk) == "skipped"  # a second delivery
    request.refresh_from_db()
    snapshot = DatasetSnapshot.objects.get()
    assert request.status == SnapshotRequestStatus.DONE and request.snapshot == snapshot
    assert (snapshot.note, snapshot.created_by, snapshot.item_count) == ("for digits@2", lena, 3)
    assert request.finished_at is not None


def test_the_task_builds_the_same_content_as_the_synchronous_call_training_jobs_make(labeled):
    synchronous = create_snapshot(digits(), note="training job 1 (drift)")  # registry's call, unchanged
    request = SnapshotRequest.objects.create(class_set=digits())
    tasks.create_snapshot(request.pk)
    request.refresh_from_db()
    assert request.snapshot.content_hash == synchronous.content_hash and request.snapshot.same_content_as_parent
    assert request.snapshot.parent == synchronous and request.snapshot.version == 2


def test_a_transient_database_error_leaves_the_request_pending_for_the_retry(labeled, monkeypatch):
    request = SnapshotRequest.objects.create(class_set=digits())
    monkeypatch.setattr(snapshots, "create_snapshot", mock.Mock(side_effect=OperationalError("server closed")))
    with pytest.raises(OperationalError):
        snapshots.build_requested(request.pk, may_retry=True)
    assert SnapshotRequest.objects.get(pk=request.pk).status == SnapshotRequestStatus.PENDING

    assert snapshots.build_requested(request.pk, may_retry=False) == "failed"  # the last attempt
    request.refresh_from_db()
    assert request.error == "OperationalError: server closed" and request.snapshot is None


def test_the_snapshot_task_retries_database_errors_a_few_times():
    assert tasks.create_snapshot.autoretry_for == snapshots.TRANSIENT_DB_ERRORS
    assert tasks.create_snapshot.max_retries == 3 and tasks.create_snapshot.queue == "default"
    assert tasks.create_snapshot.soft_time_limit > 17 * 10  # ten times the 100,000-label build


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_second_worker_skips_a_request_another_one_is_building():
    request = SnapshotRequest.objects.create(class_set=digits())
    outcome = {}

    def second_worker():
        try:
            outcome["second"] = snapshots.build_requested(request.pk)
        finally:
            connection.close()

    with transaction.atomic():
        SnapshotRequest.objects.select_for_update().get(pk=request.pk)  # the first worker's claim
        thread = threading.Thread(target=second_worker)
        thread.start()
        thread.join(10)
    assert outcome == {"second": "skipped"}
    assert not DatasetSnapshot.objects.exists()


def test_requests_whose_message_was_lost_are_queued_again_by_the_beat(labeled, django_capture_on_commit_callbacks):
    lost = SnapshotRequest.objects.create(class_set=digits(), created=timezone.now() - timedelta(minutes=20))
    recent = SnapshotRequest.objects.create(class_set=digits())
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.recover_snapshot_work() == {"exports": 0, "snapshot_requests": 1}
    assert SnapshotRequest.objects.get(pk=lost.pk).status == SnapshotRequestStatus.DONE
    assert SnapshotRequest.objects.get(pk=recent.pk).status == SnapshotRequestStatus.PENDING


def test_the_recovery_runs_on_the_beat_schedule():
    from labeling.schedules import default_schedules

    assert ("labeling.recover_snapshot_work", 600) in default_schedules().values()


# --- Exports: retried, recovered, deleted with their snapshot ---------------------------------


@pytest.fixture
def sealed(labeled) -> DatasetSnapshot:
    return create_snapshot(digits())


def failing_saves(monkeypatch, error: Exception, times: int = 10**6):
    """The artifacts storage fails ``times`` saves with ``error``, then works again."""
    real = FileSystemStorage._save
    calls = {"n": 0}

    def flaky(self, name, content):
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return real(self, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", flaky)
    return calls


def claimable(snapshot: DatasetSnapshot) -> None:
    DatasetSnapshot.objects.filter(pk=snapshot.pk).update(export_status=ExportStatus.PENDING)


def test_a_transient_storage_error_puts_the_export_back_to_pending_for_a_retry(sealed, monkeypatch):
    failing_saves(monkeypatch, ConnectionResetError("connection reset by peer"), times=1)
    claimable(sealed)
    with pytest.raises(export.RetryLater):
        export.export_snapshot(sealed.pk, may_retry=True)
    sealed.refresh_from_db()
    assert sealed.export_status == ExportStatus.PENDING
    assert sealed.export_error == "ConnectionResetError: connection reset by peer (retrying)"
    assert not storages["artifacts"].exists(export.archive_key(sealed))

    assert export.export_snapshot(sealed.pk, may_retry=True) == "done"  # the retry
    sealed.refresh_from_db()
    assert sealed.export_status == ExportStatus.DONE and sealed.export_error == ""


def test_a_permanent_error_fails_the_export_at_once_even_with_attempts_left(sealed, monkeypatch):
    failing_saves(monkeypatch, PermissionError("Permission denied"))
    claimable(sealed)
    assert export.export_snapshot(sealed.pk, may_retry=True) == "failed"
    sealed.refresh_from_db()
    assert sealed.export_status == ExportStatus.FAILED and sealed.export_error == "PermissionError: Permission denied"


def run_as_worker(task, args, retries: int):
    """Run ``task`` as a worker would, as attempt ``retries`` + 1; return its outcome and the
    retry message it sent, if any (the broker is replaced by a list)."""
    sent = []
    task.push_request(id="the-task-id", args=args, kwargs={}, retries=retries, is_eager=False, called_directly=False)
    try:
        with mock.patch.object(Signature, "apply_async", lambda self, *a, **kw: sent.append(self)):
            try:
                outcome = task.run(*args)
            except Retry:
                outcome = "retry"
    finally:
        task.pop_request()
    return outcome, sent


def test_the_export_task_retries_a_transient_error_with_backoff_then_gives_up(sealed, monkeypatch):
    failing_saves(monkeypatch, TimeoutError("timed out"))
    claimable(sealed)
    outcome, [retry] = run_as_worker(tasks.export_snapshot, [sealed.pk], retries=0)
    assert outcome == "retry" and retry.options["retries"] == 1
    assert 0 <= retry.options["countdown"] <= export.RETRY_BACKOFF_S
    assert DatasetSnapshot.objects.get(pk=sealed.pk).export_status == ExportStatus.PENDING

    outcome, sent = run_as_worker(tasks.export_snapshot, [sealed.pk], retries=export.MAX_RETRIES)
    assert (outcome, sent) == ("failed", [])  # the last attempt
    sealed.refresh_from_db()
    assert sealed.export_status == ExportStatus.FAILED and sealed.export_error == "TimeoutError: timed out"


def test_a_retried_export_succeeds_once_the_storage_is_back(sealed, monkeypatch):
    failing_saves(monkeypatch, ConnectionRefusedError("refused"), times=1)
    claimable(sealed)
    assert run_as_worker(tasks.export_snapshot, [sealed.pk], retries=0)[0] == "retry"
    assert run_as_worker(tasks.export_snapshot, [sealed.pk], retries=1) == ("done", [])


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(28, "No space left on device"), True),
        (OperationalError("server closed the connection"), True),
        (PermissionError("denied"), False),
        (FileNotFoundError("gone"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_are_worth_another_attempt(error, transient):
    assert export.is_transient(error) is transient


def test_s3_errors_are_retried_when_the_service_says_not_now():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(status, code):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert export.is_transient(client_error(503, "ServiceUnavailable"))
    assert export.is_transient(client_error(400, "SlowDown"))
    assert not export.is_transient(client_error(403, "AccessDenied"))
    assert export.is_transient(EndpointConnectionError(endpoint_url="http://s3.invalid"))


def test_an_eager_export_records_a_transient_error_at_once(sealed, monkeypatch, django_capture_on_commit_callbacks):
    failing_saves(monkeypatch, ConnectionResetError("reset"))
    with django_capture_on_commit_callbacks(execute=True):
        export.request_export(sealed)  # tasks are eager here: it runs inside this call
    sealed.refresh_from_db()
    assert sealed.export_status == ExportStatus.FAILED and sealed.export_error == "ConnectionResetError: reset"


def test_an_export_left_running_past_the_time_limit_is_queued_again_by_the_beat(
    sealed, django_capture_on_commit_callbacks
):
    long_ago = timezone.now() - export.STALE_AFTER - timedelta(minutes=1)
    DatasetSnapshot.objects.filter(pk=sealed.pk).update(export_status=ExportStatus.RUNNING, export_started_at=long_ago)
    recent = create_snapshot(digits())
    DatasetSnapshot.objects.filter(pk=recent.pk).update(
        export_status=ExportStatus.RUNNING, export_started_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.recover_snapshot_work() == {"exports": 1, "snapshot_requests": 0}
    assert DatasetSnapshot.objects.get(pk=sealed.pk).export_status == ExportStatus.DONE
    assert DatasetSnapshot.objects.get(pk=recent.pk).export_status == ExportStatus.RUNNING


def exported(snapshot: DatasetSnapshot, django_capture_on_commit_callbacks) -> DatasetSnapshot:
    with django_capture_on_commit_callbacks(execute=True):
        export.request_export(snapshot)
    snapshot.refresh_from_db()
    assert snapshot.export_status == ExportStatus.DONE
    return snapshot


def test_deleting_a_snapshot_deletes_its_archive_once_the_deletion_commits(sealed, django_capture_on_commit_callbacks):
    snapshot = exported(sealed, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        snapshot.delete()
    assert storages["artifacts"].exists(snapshot.export_key)  # not before the commit
    for callback in callbacks:
        callback()
    assert not storages["artifacts"].exists(snapshot.export_key)


def test_deleting_snapshots_in_the_admin_deletes_their_archives(
    client, django_user_model, sealed, django_capture_on_commit_callbacks
):
    snapshot = exported(sealed, django_capture_on_commit_callbacks)
    client.force_login(django_user_model.objects.create_superuser("ada", "ada@example.invalid", "pw-ada-123"))
    action = {"action": "delete_selected", "_selected_action": [snapshot.pk], "post": "yes"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:labeling_datasetsnapshot_changelist"), action)
    assert response.status_code == 302 and not DatasetSnapshot.objects.exists()
    assert not storages["artifacts"].exists(snapshot.export_key)


def test_a_late_deletion_keeps_the_archive_of_a_new_snapshot_with_the_same_version(
    sealed, django_capture_on_commit_callbacks
):
    old = exported(sealed, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False) as late:
        old.delete()
    new = exported(create_snapshot(digits()), django_capture_on_commit_callbacks)
    assert new.version == old.version and new.export_key == old.export_key
    for callback in late:
        callback()
    assert storages["artifacts"].exists(new.export_key)


def test_a_snapshot_deleted_during_its_export_leaves_no_archive(sealed, monkeypatch):
    real_store = export.store

    def store_then_deleted(storage, key, archive):
        name = real_store(storage, key, archive)
        DatasetSnapshot.objects.filter(pk=sealed.pk).delete()  # a superuser, meanwhile
        return name

    monkeypatch.setattr(export, "store", store_then_deleted)
    claimable(sealed)
    assert export.export_snapshot(sealed.pk) == "deleted"
    assert not storages["artifacts"].exists(export.archive_key(sealed))


def test_a_transient_error_deleting_an_archive_is_retried(sealed, monkeypatch, django_capture_on_commit_callbacks):
    snapshot = exported(sealed, django_capture_on_commit_callbacks)
    key, class_set_id, version = snapshot.export_key, snapshot.class_set_id, snapshot.version
    DatasetSnapshot.objects.filter(pk=snapshot.pk).delete()
    with mock.patch.object(FileSystemStorage, "delete", side_effect=ConnectionResetError("reset")):
        outcome, [retry] = run_as_worker(tasks.delete_export, [key, class_set_id, version], retries=0)
        assert outcome == "retry" and retry.options["retries"] == 1
        assert run_as_worker(tasks.delete_export, [key, class_set_id, version], retries=export.MAX_RETRIES)[0] is False
    assert run_as_worker(tasks.delete_export, [key, class_set_id, version], retries=1)[0] is True
    assert not storages["artifacts"].exists(key)


def test_deleting_a_snapshot_that_was_never_exported_queues_nothing(sealed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sealed.delete()
    assert callbacks == []


# --- Priorities after a promotion -------------------------------------------------------------


def test_the_registry_enqueues_a_rescoring_that_runs_after_its_commit(settings, django_capture_on_commit_callbacks):
    make_tasks(3, probabilities={"7": 0.5, "1": 0.45, "2": 0.05})
    before = dict(LabelTask.objects.values_list("pk", "priority"))
    settings.LABELING_UNCERTAINTY = "margin"
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        tasks.recompute_priorities.delay_on_commit(digits().pk)  # as registry.versions does
        assert dict(LabelTask.objects.values_list("pk", "priority")) == before
    assert len(callbacks) == 1
    callbacks[0]()
    after = dict(LabelTask.objects.values_list("pk", "priority"))
    assert after != before and all(priority == pytest.approx(0.95) for priority in after.values())


def test_rescoring_twice_gives_the_same_priorities_and_an_unknown_class_set_none(settings):
    make_tasks(2, probabilities={"7": 0.6, "1": 0.4})
    settings.LABELING_UNCERTAINTY = "entropy"
    assert tasks.recompute_priorities(digits().pk) == 2
    once = dict(LabelTask.objects.values_list("pk", "priority"))
    assert tasks.recompute_priorities(digits().pk) == 2
    assert dict(LabelTask.objects.values_list("pk", "priority")) == once
    assert tasks.recompute_priorities(10**9) == 0


def test_recompute_priorities_takes_a_class_set_or_a_model_name():
    make_tasks(2)
    LabelTask.objects.update(priority=0)
    assert queue.recompute_priorities(digits()) == 2
    assert queue.recompute_priorities("digits@7") == 2
    assert all(task.priority > 0 for task in LabelTask.objects.all())
    assert tasks.recompute_priorities.name == "labeling.recompute_priorities"
