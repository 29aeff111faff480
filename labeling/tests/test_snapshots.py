"""Dataset snapshots and their export: what counts as an item, versions and parents, a content
hash that depends on the items only, immutability, and the exported archive (local folders and
a real S3 server), idempotent, failing without leftovers, in bounded memory at 20,000 items."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.db.models import ProtectedError
from django.utils import timezone

from conftest import make_device
from devices.models import PredictionImage
from labeling import export, services
from labeling.models import (
    ClassSet,
    DatasetSnapshot,
    ExportStatus,
    FrozenSnapshotError,
    Label,
    LabelOrigin,
    LabelTask,
    ReviewStatus,
    SnapshotItem,
    TaskSource,
    TaskStatus,
)
from labeling.snapshots import SnapshotError, create_snapshot, items_hash
from labeling.tests.factories import digits, tasks, user_with

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 40  # the export copies bytes, it never decodes them


@pytest.fixture
def lena(django_user_model):
    return user_with(django_user_model, "lena", "label_tasks")


@pytest.fixture
def rita(django_user_model):
    return user_with(django_user_model, "rita", "review_labels")


def answer(user, task: LabelTask, value: str) -> Label:
    """Label ``task`` as ``user`` through the queue's service (leasing that very task first)."""
    expires = timezone.now() + timedelta(minutes=5)
    LabelTask.objects.filter(pk=task.pk).update(status=TaskStatus.LEASED, leased_by=user, lease_expires_at=expires)
    return services.record_label(user, task.pk, value)


def items_of(snapshot: DatasetSnapshot) -> dict[int, str]:
    return dict(snapshot.items.values_list("task_id", "label"))


def with_image(task: LabelTask, area: str = "drift_images", content: bytes = PNG) -> LabelTask:
    key = f"samples/{task.pk}.png"
    storages[area].save(key, ContentFile(content))
    LabelTask.objects.filter(pk=task.pk).update(image_area=area, image_key=key)
    task.image_area, task.image_key = area, key
    return task


# --- What a snapshot holds --------------------------------------------------------------------


def test_a_snapshot_holds_the_latest_live_label_of_each_labeled_task(lena, django_user_model):
    first, second, pending = tasks(3)
    answer(lena, first, "3")
    answer(lena, second, "5")
    feedback = Label.objects.create(task=second, value="6", origin=LabelOrigin.FEEDBACK)  # later than lena's

    snapshot = create_snapshot(digits(), by=lena, note="first cut")

    assert items_of(snapshot) == {first.pk: "3", second.pk: "6"}
    assert snapshot.items.get(task_id=second.pk).origin == LabelOrigin.FEEDBACK
    assert (snapshot.item_count, snapshot.created_by, snapshot.note) == (2, lena, "first cut")
    assert feedback.task_id == second.pk and pending.pk not in items_of(snapshot)


def test_undone_rejected_and_gold_labels_are_left_out(lena, rita):
    undone, rejected, kept = tasks(3)
    (gold,) = tasks(1)
    LabelTask.objects.filter(pk=gold.pk).update(gold_label="4")
    answer(lena, undone, "1")
    services.undo(lena)
    answer(lena, rejected, "2")
    services.review(rita, rejected.labels.get().pk, accept=False)
    answer(lena, kept, "7")
    services.record_label(lena, gold.pk, "4")

    assert items_of(create_snapshot(digits())) == {kept.pk: "7"}


def test_an_older_live_label_still_counts_when_a_later_one_is_rejected(lena, rita):
    (task,) = tasks(1)
    answer(lena, task, "8")
    late = Label.objects.create(task=task, value="9", origin=LabelOrigin.FEEDBACK)
    services.review(rita, late.pk, accept=False)

    assert items_of(create_snapshot(digits())) == {task.pk: "8"}


def test_with_review_required_only_accepted_labels_count(lena, rita):
    ClassSet.objects.filter(name="digits").update(review_required=True)
    accepted, waiting = tasks(2)
    answer(lena, accepted, "1")
    answer(lena, waiting, "2")
    services.review(rita, accepted.labels.get().pk, accept=True)

    assert items_of(create_snapshot(digits())) == {accepted.pk: "1"}


def test_folded_duplicates_are_items_with_their_representatives_label(lena):
    rng = np.random.default_rng(3)
    scene = rng.normal(size=32)
    (representative,) = tasks(1, features=scene)
    copies = [task for _ in range(2) for task in tasks(1, features=scene + rng.normal(0, 0.01, 32))]
    (unlabeled,) = tasks(1, features=rng.normal(size=32))
    folded_into_unlabeled = tasks(1, features=np.frombuffer(unlabeled.features, dtype="<f4") + 0.001)[0]
    assert all(copy.duplicate_of == representative for copy in copies)
    assert folded_into_unlabeled.duplicate_of == unlabeled
    answer(lena, representative, "4")

    snapshot = create_snapshot(digits())

    assert items_of(snapshot) == {representative.pk: "4", copies[0].pk: "4", copies[1].pk: "4"}
    copy = snapshot.items.get(task_id=copies[0].pk)
    assert bytes(copy.features) == bytes(copies[0].features)  # its own sample, the representative's label


def test_a_duplicate_with_a_label_of_its_own_keeps_it(lena):
    scene = np.ones(16)
    representative, copy = tasks(1, features=scene)[0], tasks(1, features=scene * 1.001)[0]
    assert copy.duplicate_of == representative
    answer(lena, representative, "4")
    Label.objects.create(task=copy, value="5", origin=LabelOrigin.FEEDBACK)

    assert items_of(create_snapshot(digits())) == {representative.pk: "4", copy.pk: "5"}


def test_only_the_class_sets_own_tasks_are_items(lena):
    letters = ClassSet.objects.create(name="letters", classes=["a", "b"])
    (digit,) = tasks(1)
    (letter,) = tasks(1, model_version="letters@2", predicted_label="a")
    answer(lena, digit, "1")
    answer(lena, letter, "b")

    assert items_of(create_snapshot(letters)) == {letter.pk: "b"}
    assert items_of(create_snapshot(digits())) == {digit.pk: "1"}


def test_class_counts_list_every_class_in_order_and_labels_the_set_no_longer_has(lena):
    for task, value in zip(tasks(3), ["2", "2", "9"], strict=True):
        answer(lena, task, value)
    ClassSet.objects.filter(name="digits").update(classes=[str(n) for n in range(9)])  # "9" dropped

    snapshot = create_snapshot(digits())

    assert list(snapshot.class_counts) == [*map(str, range(9)), "9"]
    assert snapshot.class_counts["2"] == 2 and snapshot.class_counts["9"] == 1 and snapshot.class_counts["0"] == 0


def test_an_item_keeps_the_sample_reference_and_a_late_shipped_prediction_image(lena):
    device = make_device("cam-1").device
    prediction_id = uuid.uuid4()
    (late,) = tasks(1, device_id=device.pk, prediction_id=prediction_id)
    (drift,) = tasks(1, source=TaskSource.DRIFT, model_version="digits@2", predicted_label="1")
    with_image(drift)
    PredictionImage.objects.create(
        device=device,
        prediction_id=prediction_id,
        storage_key="cam/late.png",
        content_type="image/png",
        width=28,
        height=28,
        size=812,
    )
    answer(lena, late, "7")
    answer(lena, drift, "2")

    items = {item.task_id: item for item in create_snapshot(digits()).items.all()}

    assert (items[late.pk].image_area, items[late.pk].image_key) == ("prediction_images", "cam/late.png")
    assert (items[drift.pk].image_area, items[drift.pk].image_key) == ("drift_images", drift.image_key)
    assert (items[drift.pk].model_version, items[drift.pk].predicted_label) == ("digits@2", "1")


def test_an_empty_class_set_gives_an_empty_snapshot():
    snapshot = create_snapshot(digits())
    assert (snapshot.version, snapshot.item_count, snapshot.items.count()) == (1, 0, 0)
    assert len(snapshot.content_hash) == 64


# --- Versions, parents, content hash ----------------------------------------------------------


def test_versions_count_up_per_class_set_and_the_parent_is_the_previous_latest():
    letters = ClassSet.objects.create(name="letters", classes=["a"])
    first, second = create_snapshot(digits()), create_snapshot(digits())
    other = create_snapshot(letters)
    chosen = create_snapshot(digits(), parent=first)

    assert [first.version, second.version, chosen.version, other.version] == [1, 2, 3, 1]
    assert (first.parent, second.parent, chosen.parent, other.parent) == (None, first, first, None)


def test_a_parent_from_another_class_set_is_refused():
    letters = create_snapshot(ClassSet.objects.create(name="letters", classes=["a"]))
    with pytest.raises(SnapshotError, match="another class set"):
        create_snapshot(digits(), parent=letters)
    assert not DatasetSnapshot.objects.filter(class_set__name="digits").exists()


def test_the_same_labels_give_the_same_hash_and_the_new_version_says_so(lena):
    for task in tasks(4):
        answer(lena, task, "3")
    first = create_snapshot(digits())
    second = create_snapshot(digits(), note="same data, new training run")

    assert second.content_hash == first.content_hash and second.version == 2
    assert second.same_content_as_parent and not first.same_content_as_parent


def test_the_hash_changes_when_a_label_changes(lena, rita):
    ClassSet.objects.filter(name="digits").update(review_required=True)
    one, two = tasks(2)
    answer(lena, one, "3")
    answer(lena, two, "4")
    services.review(rita, one.labels.get().pk, accept=True)
    services.review(rita, two.labels.get().pk, accept=True)
    before = create_snapshot(digits())
    Label.objects.create(task=two, value="5", review=ReviewStatus.ACCEPTED)  # an operator's correction

    after = create_snapshot(digits())

    assert after.content_hash != before.content_hash and not after.same_content_as_parent
    assert items_of(after) == {one.pk: "3", two.pk: "5"}


def test_the_hash_depends_on_the_items_only_not_on_order_or_time(lena):
    for task, value in zip(tasks(5, features=None), "31415", strict=True):
        answer(lena, task, value)
    snapshot = create_snapshot(digits())
    stored = list(snapshot.items.all())

    assert items_hash(sorted(stored, key=lambda item: item.task_id)) == snapshot.content_hash
    assert items_hash(reversed(stored)) != snapshot.content_hash  # the canonical order is part of it
    later = create_snapshot(digits())
    assert later.created > snapshot.created and later.content_hash == snapshot.content_hash


# --- Immutability -----------------------------------------------------------------------------


@pytest.fixture
def sealed(lena) -> DatasetSnapshot:
    (task,) = tasks(1)
    answer(lena, task, "3")
    return create_snapshot(digits())


def test_a_sealed_snapshot_refuses_changes_but_to_its_export_fields(sealed):
    sealed.note = "rewritten history"
    with pytest.raises(FrozenSnapshotError, match="note"):
        sealed.save()
    with pytest.raises(FrozenSnapshotError):
        DatasetSnapshot.objects.filter(pk=sealed.pk).update(item_count=0)
    with pytest.raises(FrozenSnapshotError):
        DatasetSnapshot(pk=sealed.pk, class_set=sealed.class_set, version=9, content_hash="x", item_count=0).save()

    fresh = DatasetSnapshot.objects.get(pk=sealed.pk)
    fresh.export_status, fresh.export_error = ExportStatus.FAILED, "disk full"
    fresh.save()
    fresh.export_status = ExportStatus.NONE
    fresh.save(update_fields=["export_status"])
    DatasetSnapshot.objects.filter(pk=sealed.pk).update(export_error="")
    assert DatasetSnapshot.objects.get(pk=sealed.pk).note == ""


def test_snapshot_items_can_be_neither_changed_added_nor_removed_one_by_one(sealed):
    item = sealed.items.get()
    item.label = "8"
    with pytest.raises(FrozenSnapshotError):
        item.save()
    with pytest.raises(FrozenSnapshotError):
        SnapshotItem.objects.filter(snapshot=sealed).update(label="8")
    with pytest.raises(FrozenSnapshotError):
        SnapshotItem(snapshot=sealed, task_id=999, label="1", origin=LabelOrigin.LABELER).save()
    with pytest.raises(FrozenSnapshotError):
        item.delete()
    with pytest.raises(FrozenSnapshotError):
        sealed.items.all().delete()
    assert list(sealed.items.values_list("label", flat=True)) == ["3"]


def test_a_parent_cannot_be_deleted_and_a_leaf_goes_with_its_items(sealed):
    child = create_snapshot(digits())
    with pytest.raises(ProtectedError):
        sealed.delete()
    child.delete()
    assert not SnapshotItem.objects.filter(snapshot_id=child.pk).exists()
    assert SnapshotItem.objects.filter(snapshot=sealed).count() == 1


# --- Export -----------------------------------------------------------------------------------


def open_archive(snapshot: DatasetSnapshot) -> tarfile.TarFile:
    data = storages["artifacts"].open(snapshot.export_key, "rb").read()
    assert hashlib.sha256(data).hexdigest() == snapshot.export_sha256 and len(data) == snapshot.export_size
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def read(archive: tarfile.TarFile, name: str) -> bytes:
    return archive.extractfile(name).read()


@pytest.fixture
def labeled(lena) -> dict[str, LabelTask]:
    """Two labeled tasks with images (one area each), one without, one whose image is gone."""
    with_three, with_seven, plain, lost = tasks(4)
    with_image(with_three, "drift_images", PNG + b"3")
    with_image(with_seven, "prediction_images", PNG + b"7")
    with_image(lost)
    storages["drift_images"].delete(lost.image_key)
    for task, value in ((with_three, "3"), (with_seven, "7"), (plain, "7"), (lost, "1")):
        answer(lena, task, value)
    return {"three": with_three, "seven": with_seven, "plain": plain, "lost": lost}


def export_now(snapshot: DatasetSnapshot, django_capture_on_commit_callbacks) -> DatasetSnapshot:
    with django_capture_on_commit_callbacks(execute=True):
        export.request_export(snapshot)
    snapshot.refresh_from_db()
    return snapshot


def test_an_export_is_a_tar_gz_of_images_in_class_folders_labels_csv_and_a_manifest(
    labeled, django_capture_on_commit_callbacks
):
    snapshot = export_now(create_snapshot(digits()), django_capture_on_commit_callbacks)
    three, seven = labeled["three"].pk, labeled["seven"].pk

    assert snapshot.export_status == ExportStatus.DONE and snapshot.exported_at is not None
    assert snapshot.export_key == "snapshots/digits/v1.tar.gz"
    archive = open_archive(snapshot)
    assert archive.getnames() == [f"images/3/{three}.png", f"images/7/{seven}.png", "labels.csv", "manifest.json"]
    assert read(archive, f"images/7/{seven}.png") == PNG + b"7"

    rows = list(csv.DictReader(io.StringIO(read(archive, "labels.csv").decode())))
    assert [(int(r["task_id"]), r["label"], r["image"]) for r in rows] == [
        (three, "3", f"images/3/{three}.png"),
        (seven, "7", f"images/7/{seven}.png"),
        (labeled["plain"].pk, "7", ""),
        (labeled["lost"].pk, "1", ""),
    ]
    assert (
        rows[0]["origin"] == "labeler" and rows[0]["model_version"] == "digits@1" and rows[0]["predicted_label"] == "7"
    )


def test_the_manifest_describes_the_snapshot_and_checksums_every_member(labeled, django_capture_on_commit_callbacks):
    parent = create_snapshot(digits())
    snapshot = export_now(create_snapshot(digits()), django_capture_on_commit_callbacks)
    archive = open_archive(snapshot)
    manifest = json.loads(read(archive, "manifest.json"))

    assert manifest["snapshot"]["id"] == snapshot.pk and manifest["snapshot"]["version"] == 2
    assert manifest["parent"] == {"id": parent.pk, "version": 1}
    assert manifest["class_set"] == {"name": "digits", "classes": [str(n) for n in range(10)]}
    assert manifest["content_hash"] == snapshot.content_hash
    assert manifest["counts"]["items"] == 4 and manifest["counts"]["classes"]["7"] == 2
    assert (
        manifest["counts"]["images"],
        manifest["counts"]["missing_images"],
        manifest["counts"]["without_image"],
    ) == (
        2,
        1,
        1,
    )
    assert manifest["created"] == snapshot.created.isoformat()
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == {name for name in archive.getnames() if name != "manifest.json"}
    for path, entry in listed.items():
        data = read(archive, path)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    lost = labeled["lost"]
    assert manifest["missing"] == [
        {"task_id": lost.pk, "image_area": "drift_images", "image_key": lost.image_key, "reason": "FileNotFoundError"}
    ]


def test_labels_that_are_not_plain_names_make_safe_folders(lena, django_capture_on_commit_callbacks):
    odd = ClassSet.objects.create(name="odd/set", classes=["../up", ".", "a b"])
    for value in odd.classes:
        (task,) = tasks(1, model_version="odd/set@1", predicted_label="a b")
        answer(lena, with_image(task), value)
    snapshot = export_now(create_snapshot(odd), django_capture_on_commit_callbacks)

    assert snapshot.export_key == "snapshots/odd%2Fset/v1.tar.gz"
    folders = sorted(name.split("/")[1] for name in open_archive(snapshot).getnames() if name.startswith("images/"))
    assert folders == ["%2E", "..%2Fup", "a b"]


def test_an_export_runs_once_the_request_commits_on_the_default_queue(sealed, django_capture_on_commit_callbacks):
    from labeling.tasks import export_snapshot

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert export.request_export(sealed)
        sealed.refresh_from_db()
        assert sealed.export_status == ExportStatus.PENDING
    assert len(callbacks) == 1
    assert export_snapshot.queue == "default" and export_snapshot.name == "labeling.export_snapshot"


def test_a_done_export_is_not_redone(sealed, django_capture_on_commit_callbacks):
    done = export_now(sealed, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert not export.request_export(done)
    assert callbacks == []
    assert export.export_snapshot(done.pk) == "skipped"
    again = DatasetSnapshot.objects.get(pk=done.pk)
    assert (again.exported_at, again.export_sha256) == (done.exported_at, done.export_sha256)


def test_a_running_export_is_left_alone_until_it_goes_stale(sealed):
    recently = timezone.now() - timedelta(minutes=5)
    DatasetSnapshot.objects.filter(pk=sealed.pk).update(export_status=ExportStatus.RUNNING, export_started_at=recently)
    assert not export.request_export(sealed)
    assert export.export_snapshot(sealed.pk) == "skipped"

    long_ago = timezone.now() - export.STALE_AFTER - timedelta(minutes=1)
    DatasetSnapshot.objects.filter(pk=sealed.pk).update(export_started_at=long_ago)
    assert export.export_snapshot(sealed.pk) == "done"  # its worker is gone: taken over


def test_a_failed_export_says_why_and_leaves_no_object(sealed, monkeypatch, django_capture_on_commit_callbacks):
    def half_written(self, name, content):
        path = Path(self.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.read(10))
        raise OSError("No space left on device")

    monkeypatch.setattr(FileSystemStorage, "_save", half_written)
    snapshot = export_now(sealed, django_capture_on_commit_callbacks)

    assert snapshot.export_status == ExportStatus.FAILED
    assert snapshot.export_error == "OSError: No space left on device"
    assert (snapshot.export_key, snapshot.export_size, snapshot.export_sha256) == ("", None, "")
    assert not storages["artifacts"].exists(export.archive_key(snapshot))

    monkeypatch.undo()
    assert export_now(snapshot, django_capture_on_commit_callbacks).export_status == ExportStatus.DONE


def test_an_error_while_reading_images_fails_the_export_before_anything_is_stored(
    labeled, monkeypatch, django_capture_on_commit_callbacks
):
    def unreadable(self, name, mode="rb"):
        raise PermissionError(f"Permission denied: {name}")

    monkeypatch.setattr(FileSystemStorage, "open", unreadable)
    snapshot = export_now(create_snapshot(digits()), django_capture_on_commit_callbacks)

    assert snapshot.export_status == ExportStatus.FAILED and "PermissionError" in snapshot.export_error
    assert not storages["artifacts"].exists(export.archive_key(snapshot))


# --- On S3 ------------------------------------------------------------------------------------


def test_on_s3_the_export_reads_images_from_their_buckets_and_stores_a_plain_gzip(
    s3_storages, labeled, django_capture_on_commit_callbacks
):
    snapshot = export_now(create_snapshot(digits()), django_capture_on_commit_callbacks)

    assert snapshot.export_status == ExportStatus.DONE, snapshot.export_error
    head = s3_storages.client.head_object(Bucket=s3_storages.bucket, Key=f"artifacts/{snapshot.export_key}")
    assert head["ContentType"] == "application/gzip" and "ContentEncoding" not in head
    archive = open_archive(snapshot)
    seven = labeled["seven"].pk
    assert read(archive, f"images/7/{seven}.png") == PNG + b"7"  # from prediction_images' own bucket
    manifest = json.loads(read(archive, "manifest.json"))
    assert [entry["task_id"] for entry in manifest["missing"]] == [labeled["lost"].pk]


def test_on_s3_a_failed_upload_leaves_no_object(s3_storages, sealed, monkeypatch, django_capture_on_commit_callbacks):
    def broken(*args, **kwargs):
        raise ConnectionError("the bucket went away")

    monkeypatch.setattr("boto3.s3.inject.object_upload_fileobj", broken)
    snapshot = export_now(sealed, django_capture_on_commit_callbacks)

    assert snapshot.export_status == ExportStatus.FAILED and "the bucket went away" in snapshot.export_error
    listing = s3_storages.client.list_objects_v2(Bucket=s3_storages.bucket, Prefix="artifacts/")
    assert listing.get("KeyCount", 0) == 0


# --- At size ----------------------------------------------------------------------------------

# Each bound sits between what streaming measured (SQLite and PostgreSQL) and what listing the
# rows instead of streaming them took: snapshot 3-5 MiB against 13-16 MiB, export 1.8 MiB
# against 5.9 MiB (and holding the export's images would add 20 MiB).
SNAPSHOT_MEMORY_BOUND = 8 * 1024 * 1024
EXPORT_MEMORY_BOUND = 4 * 1024 * 1024


def peak_bytes(work):
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def seed_labeled_tasks(n: int, lena, features: int) -> None:
    vectors = np.random.default_rng(11).standard_normal((n, features), dtype=np.float32)
    class_set, now = digits(), timezone.now()
    LabelTask.objects.bulk_create(
        [
            LabelTask(
                key=f"bulk:{i}",
                source=TaskSource.UNCERTAIN,
                class_set=class_set,
                status=TaskStatus.DONE,
                model_version="digits@1",
                predicted_label=str(i % 10),
                features=vectors[i].tobytes(),
            )
            for i in range(n)
        ],
        batch_size=1000,
    )
    ids = LabelTask.objects.filter(key__startswith="bulk:").values_list("pk", flat=True)
    Label.objects.bulk_create(
        [Label(task_id=pk, value=str(pk % 10), labeled_by=lena, created=now) for pk in ids], batch_size=2000
    )


def test_ten_thousand_labels_are_snapshotted_in_bounded_memory(lena):
    seed_labeled_tasks(10_000, lena, features=256)  # 1 KiB vectors: 10 MiB of features in all

    snapshot, peak = peak_bytes(lambda: create_snapshot(digits()))

    assert snapshot.item_count == 10_000
    assert peak < SNAPSHOT_MEMORY_BOUND, f"snapshot peak {peak / 2**20:.1f} MiB"


LARGE = 20_000
WITH_IMAGE_EVERY = 4  # 5,000 images
IMAGE_BYTES = 4096


def large_snapshot(n: int) -> DatasetSnapshot:
    """A sealed snapshot of ``n`` items written straight in (the labels behind them don't matter
    here), every WITH_IMAGE_EVERY-th with an image in the drift_images folder."""
    rng = np.random.default_rng(12)
    snapshot = DatasetSnapshot.objects.create(class_set=digits(), version=1, content_hash="", item_count=n)
    items = [
        SnapshotItem(
            snapshot=snapshot,
            task_id=i,
            label=str(i % 10),
            origin=LabelOrigin.LABELER,
            image_area="drift_images" if i % WITH_IMAGE_EVERY == 0 else "",
            image_key=f"large/{i}.png" if i % WITH_IMAGE_EVERY == 0 else "",
            features=rng.standard_normal(64, dtype=np.float32).tobytes(),
            model_version="digits@1",
            predicted_label="7",
        )
        for i in range(n)
    ]
    SnapshotItem.objects.bulk_create(items, batch_size=2000)
    snapshot.content_hash = items_hash(items)
    snapshot.save()
    folder = Path(storages["drift_images"].location) / "large"
    folder.mkdir(parents=True)
    for i in range(0, n, WITH_IMAGE_EVERY):
        (folder / f"{i}.png").write_bytes(PNG + rng.bytes(IMAGE_BYTES - len(PNG)))
    return snapshot


def test_twenty_thousand_items_are_exported_in_bounded_memory():
    snapshot = large_snapshot(LARGE)
    DatasetSnapshot.objects.filter(pk=snapshot.pk).update(export_status=ExportStatus.PENDING)

    outcome, peak = peak_bytes(lambda: export.export_snapshot(snapshot.pk))

    snapshot.refresh_from_db()
    assert outcome == "done", snapshot.export_error
    assert snapshot.export_size > LARGE // WITH_IMAGE_EVERY * IMAGE_BYTES
    assert peak < EXPORT_MEMORY_BOUND, f"export peak {peak / 2**20:.1f} MiB"
    names = open_archive(snapshot).getnames()
    assert len(names) == LARGE // WITH_IMAGE_EVERY + 2 and names[-2:] == ["labels.csv", "manifest.json"]
