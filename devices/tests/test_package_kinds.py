"""The devices app's package kinds: prediction_images, logs and state_snapshot. Each stores its
records once per (device, record id) however often they arrive, and fails a package whose
content can never be stored with a reason that names the member or field at fault."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.files.storage import storages
from PIL import Image

from devices.models import OperationalLog, Package, PackageStatus, PredictionImage, StateSnapshot
from devices.tests.packages import build, upload

pytestmark = pytest.mark.django_db


def png(width=4, height=3, color=(200, 10, 10), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def files_in(area: str, folder: str) -> list[str]:
    storage = storages[area]
    return sorted(storage.listdir(folder)[1]) if storage.exists(folder) else []


def assert_processed(package: Package) -> None:
    assert package.status == PackageStatus.PROCESSED, package.error


def assert_failed(package: Package, *fragments: str) -> None:
    assert package.status == PackageStatus.FAILED, package.summary
    for fragment in fragments:
        assert fragment in package.error, package.error


# --- prediction_images --------------------------------------------------------------------------


def images_package(device, images: dict[str, bytes], records=None):
    files = [(f"images/{name}", data) for name, data in images.items()]
    ids = records if records is not None else [name.rsplit(".", 1)[0] for name in images]
    return build(device, "prediction_images", files, records=ids)


def test_a_prediction_image_is_stored_under_the_device_and_prediction_id(send, device_a):
    prediction = str(uuid.uuid4())
    data = png(4, 3)
    package = send(device_a, images_package(device_a.device, {f"{prediction}.png": data}))
    assert_processed(package)
    assert package.summary == {"images": 1, "stored": 1}
    image = PredictionImage.objects.get()
    key = f"{device_a.device.pk}/{prediction}.png"
    assert (image.device_id, str(image.prediction_id), image.storage_key) == (device_a.device.pk, prediction, key)
    assert (image.content_type, image.width, image.height, image.size) == ("image/png", 4, 3, len(data))
    assert image.package == package
    assert storages["prediction_images"].open(key).read() == data


def test_jpeg_and_webp_prediction_images_keep_their_extension_and_content_type(send, device_a):
    jpeg, webp = str(uuid.uuid4()), str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{jpeg}.jpg": png(fmt="JPEG"), f"{webp}.webp": png(fmt="WEBP")})
    assert_processed(send(device_a, archive))
    stored = dict(PredictionImage.objects.values_list("storage_key", "content_type"))
    assert stored == {
        f"{device_a.device.pk}/{jpeg}.jpg": "image/jpeg",
        f"{device_a.device.pk}/{webp}.webp": "image/webp",
    }


def test_processing_a_prediction_images_package_again_leaves_one_row_and_one_file(send, reprocess, device_a):
    prediction = str(uuid.uuid4())
    package = send(device_a, images_package(device_a.device, {f"{prediction}.png": png()}))
    package = reprocess(package)
    assert_processed(package)
    assert package.summary == {"images": 1, "stored": 0}
    assert PredictionImage.objects.count() == 1
    assert files_in("prediction_images", str(device_a.device.pk)) == [f"{prediction}.png"]


def test_a_replayed_prediction_images_upload_is_answered_with_its_status_and_stores_nothing_new(api, send, device_a):
    archive = images_package(device_a.device, {f"{uuid.uuid4()}.png": png()})
    package = send(device_a, archive)
    replay = upload(api, device_a, archive)
    assert (replay.status_code, replay.json()["status"]) == (200, "processed"), replay.content
    assert (Package.objects.get(), PredictionImage.objects.count()) == (package, 1)


def test_the_same_prediction_image_in_two_packages_is_stored_once(send, device_a):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    send(device_a, images_package(device_a.device, {f"{first}.png": png()}))
    later = send(device_a, images_package(device_a.device, {f"{first}.png": png(), f"{second}.png": png()}))
    assert_processed(later)
    assert later.summary == {"images": 2, "stored": 1}
    assert PredictionImage.objects.count() == 2
    assert files_in("prediction_images", str(device_a.device.pk)) == sorted([f"{first}.png", f"{second}.png"])


def test_two_devices_may_send_an_image_for_the_same_prediction_id(send, device_a, device_b):
    prediction = str(uuid.uuid4())
    for persona in (device_a, device_b):
        assert_processed(send(persona, images_package(persona.device, {f"{prediction}.png": png()})))
    assert PredictionImage.objects.filter(prediction_id=prediction).count() == 2


@pytest.mark.parametrize(
    "member",
    ["images/not-a-uuid.png", f"images/{uuid.uuid4()}.gif", f"pictures/{uuid.uuid4()}.png", "metrics.jsonl"],
)
def test_a_prediction_images_package_with_a_foreign_member_fails_naming_it(send, device_a, member):
    archive = build(device_a.device, "prediction_images", [(member, png())])
    assert_failed(send(device_a, archive), repr(member), "prediction_images")
    assert not PredictionImage.objects.exists()


def test_an_image_for_a_prediction_not_in_the_manifest_records_fails_the_package(send, device_a):
    listed, unlisted = str(uuid.uuid4()), str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{listed}.png": png(), f"{unlisted}.png": png()}, records=[listed])
    assert_failed(send(device_a, archive), f"images/{unlisted}.png", "manifest.records")
    assert not PredictionImage.objects.exists()
    assert files_in("prediction_images", str(device_a.device.pk)) == []


def test_a_listed_prediction_without_its_image_fails_the_package(send, device_a):
    present, missing = str(uuid.uuid4()), str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{present}.png": png()}, records=[present, missing])
    assert_failed(send(device_a, archive), missing, "no image")


def test_two_images_for_one_prediction_fail_the_package(send, device_a):
    prediction = str(uuid.uuid4())
    archive = images_package(
        device_a.device, {f"{prediction}.png": png(), f"{prediction}.jpg": png(fmt="JPEG")}, records=[prediction]
    )
    assert_failed(send(device_a, archive), "two images", f"images/{prediction}.png")


def test_a_corrupt_prediction_image_fails_the_package_and_stores_no_other_image(send, device_a):
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{good}.png": png(), f"{bad}.png": png()[:40]})
    assert_failed(send(device_a, archive), f"images/{bad}.png", "cannot be read")
    assert not PredictionImage.objects.exists()
    assert files_in("prediction_images", str(device_a.device.pk)) == []


def test_an_image_whose_format_is_not_its_extension_fails_the_package(send, device_a):
    prediction = str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{prediction}.png": png(fmt="JPEG")})
    assert_failed(send(device_a, archive), f"images/{prediction}.png", "JPEG", "not PNG")


def test_an_image_over_the_pixel_limit_fails_the_package(send, device_a, settings):
    settings.PACKAGE_MAX_IMAGE_PIXELS = 100
    prediction = str(uuid.uuid4())
    archive = images_package(device_a.device, {f"{prediction}.png": png(20, 10)})
    assert_failed(send(device_a, archive), f"images/{prediction}.png", "over the limit of 100")


# --- logs -----------------------------------------------------------------------------------------


def log_members(record_id: str, text: bytes, *, extension="log", **meta) -> list[tuple[str, bytes]]:
    document = {"id": record_id, "created": "2026-11-23T11:00:00.250Z", "name": "sphere-edge.log", **meta}
    return [(f"logs/{record_id}.json", json.dumps(document).encode()), (f"logs/{record_id}.{extension}", text)]


def logs_package(device, *records: list[tuple[str, bytes]], ids=None):
    files = [member for record in records for member in record]
    listed = ids if ids is not None else sorted({path.split("/")[1].split(".")[0] for path, _ in files})
    return build(device, "logs", files, records=listed)


def test_a_log_chunk_is_stored_as_a_file_with_its_lines_counted(send, device_a):
    record = str(uuid.uuid4())
    text = b"boot ok\nmodel digits@3 loaded\nsync: 3 records sent"
    package = send(device_a, logs_package(device_a.device, log_members(record, text)))
    assert_processed(package)
    assert package.summary == {"logs": 1, "stored": 1}
    log = OperationalLog.objects.get()
    key = f"{device_a.device.pk}/{record}.log"
    assert (str(log.client_id), log.name, log.storage_key) == (record, "sphere-edge.log", key)
    assert (log.size, log.lines, log.package) == (len(text), 3, package)
    assert log.created.isoformat() == "2026-11-23T11:00:00.250000+00:00"
    assert storages["oplogs"].open(key).read() == text


def test_a_jsonl_log_chunk_is_stored_under_the_same_log_name(send, device_a):
    record = str(uuid.uuid4())
    lines = b'{"level": "info", "msg": "start"}\n{"level": "warning", "msg": "caf\xc3\xa9 hot"}\n'
    package = send(device_a, logs_package(device_a.device, log_members(record, lines, extension="jsonl")))
    assert_processed(package)
    log = OperationalLog.objects.get()
    assert (log.storage_key, log.lines) == (f"{device_a.device.pk}/{record}.log", 2)


def test_processing_a_logs_package_again_leaves_one_row_and_one_file(send, reprocess, device_a):
    record = str(uuid.uuid4())
    package = reprocess(send(device_a, logs_package(device_a.device, log_members(record, b"one\n"))))
    assert_processed(package)
    assert package.summary == {"logs": 1, "stored": 0}
    assert OperationalLog.objects.count() == 1
    assert files_in("oplogs", str(device_a.device.pk)) == [f"{record}.log"]


def test_the_same_log_chunk_in_two_packages_is_stored_once(send, device_a):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    send(device_a, logs_package(device_a.device, log_members(first, b"a\n")))
    later = send(device_a, logs_package(device_a.device, log_members(first, b"a\n"), log_members(second, b"b\n")))
    assert later.summary == {"logs": 2, "stored": 1}
    assert OperationalLog.objects.count() == 2


@pytest.mark.parametrize("member", [f"logs/{uuid.uuid4()}.txt", "logs/not-a-uuid.log", "event.json"])
def test_a_logs_package_with_a_foreign_member_fails_naming_it(send, device_a, member):
    archive = build(device_a.device, "logs", [(member, b"text\n")])
    assert_failed(send(device_a, archive), repr(member), "logs package")


@pytest.mark.parametrize(
    ("meta", "fragments"),
    [
        ({"name": None}, ["at name", "None is not of type 'string'"]),
        ({"name": ""}, ["at name", "should be non-empty"]),
        ({"name": "x" * 65}, ["at name", "is too long"]),
        ({"name": "two\nlines"}, ["at name", "does not match"]),
        ({"created": "yesterday"}, ["at created", "date-time"]),
        ({"id": "42"}, ["at id", "uuid"]),
    ],
)
def test_log_metadata_that_breaks_the_schema_fails_naming_the_field(send, device_a, meta, fragments):
    record = str(uuid.uuid4())
    archive = logs_package(device_a.device, log_members(record, b"x\n", **meta))
    assert_failed(send(device_a, archive), f"logs/{record}.json", *fragments)


def test_log_metadata_without_a_required_field_fails_naming_it(send, device_a):
    record = str(uuid.uuid4())
    document = {"id": record, "created": "2026-11-23T11:00:00Z"}
    files = [(f"logs/{record}.json", json.dumps(document).encode()), (f"logs/{record}.log", b"x\n")]
    assert_failed(send(device_a, build(device_a.device, "logs", files, records=[record])), "'name' is a required")


def test_log_metadata_whose_id_is_not_the_one_in_its_path_fails_the_package(send, device_a):
    record = str(uuid.uuid4())
    archive = logs_package(device_a.device, log_members(record, b"x\n", id=str(uuid.uuid4())))
    assert_failed(send(device_a, archive), f"logs/{record}.json", "not the id in the member's path")


def test_a_log_chunk_that_is_not_utf8_fails_naming_the_member(send, device_a):
    record = str(uuid.uuid4())
    archive = logs_package(device_a.device, log_members(record, b"ok\n\xff\xfe broken\n"))
    assert_failed(send(device_a, archive), f"logs/{record}.log", "not UTF-8")
    assert not OperationalLog.objects.exists()


def test_a_log_text_without_metadata_or_metadata_without_text_fails_the_package(send, device_a):
    lone_text, lone_meta = str(uuid.uuid4()), str(uuid.uuid4())
    text_only = build(device_a.device, "logs", [(f"logs/{lone_text}.log", b"x\n")], records=[lone_text])
    assert_failed(send(device_a, text_only), f"logs/{lone_text}.log", "no metadata")
    meta_only = logs_package(device_a.device, log_members(lone_meta, b"x\n")[:1])
    assert_failed(send(device_a, meta_only), lone_meta, "one text member")


def test_a_log_listed_in_the_manifest_but_missing_fails_the_package(send, device_a):
    present, missing = str(uuid.uuid4()), str(uuid.uuid4())
    archive = logs_package(device_a.device, log_members(present, b"x\n"), ids=[present, missing])
    assert_failed(send(device_a, archive), missing, "manifest.records")


# --- state_snapshot -------------------------------------------------------------------------------


def snapshot_package(device, snapshot_id: str, state, **overrides):
    document = {"id": snapshot_id, "created": "2026-11-23T11:30:00Z", "state": state, **overrides}
    return build(device, "state_snapshot", [("state.json", json.dumps(document).encode())], records=[snapshot_id])


STATE = {"detectors": {"knn_distance": {"threshold": 12.0, "n": 400}}, "bundle": {"slot": "b", "version": "d@3"}}


def test_a_state_snapshot_is_stored_with_its_state(send, device_a):
    snapshot = str(uuid.uuid4())
    package = send(device_a, snapshot_package(device_a.device, snapshot, STATE))
    assert_processed(package)
    assert package.summary == {"snapshots": 1, "stored": 1}
    row = StateSnapshot.objects.get()
    assert (str(row.client_id), row.state, row.package) == (snapshot, STATE, package)
    assert row.created.isoformat() == "2026-11-23T11:30:00+00:00"


def test_processing_a_state_snapshot_again_leaves_one_row(send, reprocess, device_a):
    package = reprocess(send(device_a, snapshot_package(device_a.device, str(uuid.uuid4()), STATE)))
    assert_processed(package)
    assert package.summary == {"snapshots": 1, "stored": 0}
    assert StateSnapshot.objects.count() == 1


def test_the_same_state_snapshot_in_two_packages_is_stored_once(send, device_a):
    snapshot = str(uuid.uuid4())
    send(device_a, snapshot_package(device_a.device, snapshot, STATE))
    later = send(device_a, snapshot_package(device_a.device, snapshot, STATE))
    assert Package.objects.count() == 2
    assert later.summary == {"snapshots": 1, "stored": 0}
    assert StateSnapshot.objects.count() == 1


@pytest.mark.parametrize("member", ["state.jsonl", f"samples/{uuid.uuid4()}.json", "logs/state.json"])
def test_a_state_snapshot_package_with_a_foreign_member_fails_naming_it(send, device_a, member):
    archive = build(device_a.device, "state_snapshot", [(member, b"{}")])
    assert_failed(send(device_a, archive), repr(member), "state_snapshot package")


def test_a_state_snapshot_package_without_state_json_fails(send, device_a):
    assert_failed(send(device_a, build(device_a.device, "state_snapshot", [])), "must hold state.json")


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"state": [1, 2]}, ["at state", "not of type 'object'"]),
        ({"created": "2026-11-23"}, ["at created", "date-time"]),
        ({"state": None}, ["at state"]),
    ],
)
def test_a_state_snapshot_that_breaks_the_schema_fails_naming_the_field(send, device_a, overrides, fragments):
    archive = snapshot_package(device_a.device, str(uuid.uuid4()), **{"state": STATE, **overrides})
    assert_failed(send(device_a, archive), "state.json", *fragments)


def test_a_state_snapshot_over_the_size_cap_fails(send, device_a):
    archive = snapshot_package(device_a.device, str(uuid.uuid4()), {"blob": "x" * (1024 * 1024)})
    assert_failed(send(device_a, archive), "state.json", "over the limit")


@pytest.mark.parametrize(
    ("state", "fragment"),
    [({"note": "nul \u0000 inside"}, "NUL character"), ({"deep": json.loads("[" * 200 + "]" * 200)}, "deeper than")],
)
def test_a_state_the_database_cannot_store_fails_as_content(send, device_a, state, fragment):
    archive = snapshot_package(device_a.device, str(uuid.uuid4()), state)
    assert_failed(send(device_a, archive), "state.json at state", fragment)


def test_a_state_snapshot_whose_id_is_not_the_manifest_record_fails(send, device_a):
    snapshot = str(uuid.uuid4())
    document = {"id": snapshot, "created": "2026-11-23T11:30:00Z", "state": {}}
    archive = build(
        device_a.device, "state_snapshot", [("state.json", json.dumps(document).encode())], records=[str(uuid.uuid4())]
    )
    assert_failed(send(device_a, archive), "manifest.records", snapshot)
