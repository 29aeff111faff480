"""drift_event and quarantine packages: each event and sample is stored once per (device, id),
samples are linked to their event whichever arrives first, attachments are decoded (images,
image arrays, feature vectors) or kept as sent, and bad content fails the package by name.
The last tests ship packages built by the real edge client."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import numpy as np
import pytest
from django.core.files.storage import storages
from PIL import Image

from devices.models import Package, PackageStatus
from devices.tests.packages import Archive, build, upload
from drift.models import DriftEvent, DriftSample

pytestmark = pytest.mark.django_db
CREATED_AT = "2026-11-23T11:58:12.500Z"


def event_record(**fields) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "created": CREATED_AT,
        "detector": "knn_distance",
        "model_version": "d@3",
        **fields,
    }


def sample_record(event=None, **fields) -> dict:
    event_id = event["id"] if isinstance(event, dict) else event
    record = {"id": str(uuid.uuid4()), "created": CREATED_AT, "event_id": event_id, "label": "7", "confidence": 0.55}
    return {**record, "model_version": "d@3", **fields}


def drift_package(device, event=None, samples=(), *, event_files=None, kind=None, records=None, extra_files=()):
    """``samples``: (record, {attachment name: bytes}) pairs."""
    files = []
    if event is not None:
        files.append(("event.json", json.dumps(event).encode()))
        files += [(f"event/{name}", data) for name, data in (event_files or {}).items()]
    for record, attachments in samples:
        files.append((f"samples/{record['id']}.json", json.dumps(record).encode()))
        files += [(f"samples/{record['id']}/{name}", data) for name, data in attachments.items()]
    ids = [event["id"]] if event is not None else []
    ids += [record["id"] for record, _ in samples]
    kind = kind or ("drift_event" if event is not None else "quarantine")
    return build(device, kind, files + list(extra_files), records=ids if records is None else records)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def png(width=5, height=4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (0, 120, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_image(key: str) -> Image.Image:
    with storages["drift_images"].open(key) as file:
        image = Image.open(io.BytesIO(file.read()))
        image.load()
    return image


def drift_files(device) -> list[str]:
    storage, found, folders = storages["drift_images"], [], [str(device.pk)]
    while folders:
        folder = folders.pop()
        if storage.exists(folder):
            subfolders, files = storage.listdir(folder)
            found += [f"{folder}/{name}" for name in files]
            folders += [f"{folder}/{name}" for name in subfolders]
    return sorted(found)


def assert_processed(package: Package) -> None:
    assert package.status == PackageStatus.PROCESSED, package.error


def assert_failed(package: Package, *fragments: str) -> None:
    assert package.status == PackageStatus.FAILED, package.summary
    for fragment in fragments:
        assert fragment in package.error, package.error


# --- storing ------------------------------------------------------------------------------------


def test_a_drift_event_package_stores_the_event_and_its_samples_linked_to_it(send, device_a):
    event = event_record(scores={"statistic": 10.4}, window={"start_sample": 0, "end_sample": 602})
    features = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    with_files = sample_record(event, reasons=["knn_distance"], neighbour_distance=5.0)
    bare = sample_record(event, label="3", confidence=1.0)
    attachments = {"image.png": png(), "features.npy": npy(features), "heatmap.bin": b"\x00\x01raw"}
    package = send(device_a, drift_package(device_a.device, event, [(with_files, attachments), (bare, {})]))

    assert_processed(package)
    assert package.summary == {"events": {"created": 1, "duplicate": 0}, "samples": {"created": 2, "duplicate": 0}}
    stored_event = DriftEvent.objects.get()
    assert (str(stored_event.client_id), stored_event.detector, stored_event.model_version) == (
        event["id"],
        "knn_distance",
        "d@3",
    )
    assert stored_event.payload == event and stored_event.package == package
    assert stored_event.created.isoformat() == "2026-11-23T11:58:12.500000+00:00"
    assert set(stored_event.samples.values_list("client_id", flat=True)) == {
        uuid.UUID(with_files["id"]),
        uuid.UUID(bare["id"]),
    }

    sample = DriftSample.objects.get(client_id=with_files["id"])
    assert (sample.label, sample.confidence, sample.model_version) == ("7", 0.55, "d@3")
    assert sample.payload == with_files and str(sample.event_client_id) == event["id"]
    assert np.array_equal(np.frombuffer(bytes(sample.features), dtype="<f4"), features)
    folder = f"{device_a.device.pk}/{with_files['id']}"
    assert sample.image_key == f"{folder}.image.png"
    assert storages["drift_images"].open(sample.image_key).read() == attachments["image.png"]
    blob = attachments["heatmap.bin"]
    assert sample.attachments == [
        {
            "name": "heatmap.bin",
            "key": f"{folder}.heatmap.bin",
            "size": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
    ]
    assert storages["drift_images"].open(f"{folder}.heatmap.bin").read() == blob
    other = DriftSample.objects.get(client_id=bare["id"])
    assert (other.label, other.confidence, other.features, other.image_key, other.attachments) == (
        "3",
        1.0,
        None,
        "",
        [],
    )


def test_an_events_attachments_are_stored_as_sent_and_listed_in_its_payload(send, device_a):
    event = event_record()
    files = {"scores.csv": b"t,score\n0,1.5\n", "image.png": png()}
    assert_processed(send(device_a, drift_package(device_a.device, event, event_files=files)))
    stored = DriftEvent.objects.get()
    listed = {entry["name"]: entry for entry in stored.payload["_attachments"]}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert storages["drift_images"].open(listed[name]["key"]).read() == data
    assert {key: value for key, value in stored.payload.items() if key != "_attachments"} == event


def test_an_event_named_by_monitor_instead_of_detector_keeps_that_name(send, device_a):
    event = event_record(monitor="page_hinkley")
    del event["detector"]
    assert_processed(send(device_a, drift_package(device_a.device, event)))
    assert DriftEvent.objects.get().detector == "page_hinkley"


def test_processing_a_drift_event_package_again_stores_nothing_twice(send, reprocess, device_a):
    event = event_record()
    samples = [(sample_record(event), {"image.npy": npy(np.eye(4, dtype=np.float32))}), (sample_record(event), {})]
    package = send(device_a, drift_package(device_a.device, event, samples))
    files = drift_files(device_a.device)
    package = reprocess(package)
    assert_processed(package)
    assert package.summary == {"events": {"created": 0, "duplicate": 1}, "samples": {"created": 0, "duplicate": 2}}
    assert (DriftEvent.objects.count(), DriftSample.objects.count()) == (1, 2)
    assert drift_files(device_a.device) == files == [f"{device_a.device.pk}/{samples[0][0]['id']}.image.png"]


def test_a_replayed_drift_event_upload_is_answered_with_its_status_and_stores_nothing_new(api, send, device_a):
    event = event_record()
    archive = drift_package(device_a.device, event, [(sample_record(event), {})])
    send(device_a, archive)
    replay = upload(api, device_a, archive)
    assert (replay.status_code, replay.json()["status"]) == (200, "processed"), replay.content
    assert (Package.objects.count(), DriftEvent.objects.count(), DriftSample.objects.count()) == (1, 1, 1)


def test_records_that_arrive_again_in_another_package_are_counted_as_duplicates(send, device_a):
    event = event_record()
    first, second = sample_record(event), sample_record(event)
    send(device_a, drift_package(device_a.device, event, [(first, {})]))
    # The answer was lost and a sample joined before the retry: a new package id, same records.
    later = send(device_a, drift_package(device_a.device, event, [(first, {}), (second, {})]))
    assert_processed(later)
    assert later.summary == {"events": {"created": 0, "duplicate": 1}, "samples": {"created": 1, "duplicate": 1}}
    assert (DriftEvent.objects.count(), DriftSample.objects.count()) == (1, 2)
    assert set(DriftSample.objects.values_list("event__client_id", flat=True)) == {uuid.UUID(event["id"])}


def test_a_sample_that_arrives_before_its_event_is_linked_when_the_event_arrives(send, device_a):
    event = event_record()
    early = sample_record(event)
    assert_processed(send(device_a, drift_package(device_a.device, samples=[(early, {})])))
    sample = DriftSample.objects.get()
    assert (sample.event, str(sample.event_client_id)) == (None, event["id"])

    assert_processed(send(device_a, drift_package(device_a.device, event)))
    sample.refresh_from_db()
    assert sample.event == DriftEvent.objects.get()


def test_a_quarantine_sample_whose_event_is_stored_already_is_linked_at_once(send, device_a):
    event = event_record()
    send(device_a, drift_package(device_a.device, event))
    package = send(device_a, drift_package(device_a.device, samples=[(sample_record(event), {})]))
    assert package.summary == {"samples": {"created": 1, "duplicate": 0}}
    assert DriftSample.objects.get().event == DriftEvent.objects.get()


def test_a_quarantine_sample_without_an_event_is_stored_unlinked(send, device_a):
    assert_processed(send(device_a, drift_package(device_a.device, samples=[(sample_record(None), {})])))
    sample = DriftSample.objects.get()
    assert (sample.event, sample.event_client_id) == (None, None)


def test_another_devices_event_with_the_same_id_is_not_linked(send, device_a, device_b):
    event = event_record()
    send(device_b, drift_package(device_b.device, event))
    send(device_a, drift_package(device_a.device, samples=[(sample_record(event), {})]))
    assert DriftSample.objects.get().event is None


# --- image arrays and feature vectors -------------------------------------------------------------


@pytest.mark.parametrize(("shape", "mode"), [((8, 8), "L"), ((6, 5, 1), "L"), ((6, 5, 3), "RGB"), ((4, 7, 4), "RGBA")])
def test_an_image_array_is_rendered_to_a_min_max_scaled_png(send, device_a, shape, mode):
    pixels = np.random.default_rng(1).uniform(-3.0, 16.0, size=shape).astype(np.float32)
    sample = sample_record(None)
    assert_processed(send(device_a, drift_package(device_a.device, samples=[(sample, {"image.npy": npy(pixels)})])))
    stored = DriftSample.objects.get()
    assert stored.image_key == f"{device_a.device.pk}/{sample['id']}.image.png"
    image = stored_image(stored.image_key)
    assert (image.format, image.mode, image.size) == ("PNG", mode, (shape[1], shape[0]))
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255
    rendered = np.asarray(image, dtype=np.float64).reshape(pixels.shape)
    assert np.abs(rendered - expected).max() <= 1
    assert (rendered.min(), rendered.max()) == (0, 255)


def test_a_flat_image_array_is_rendered_black(send, device_a):
    samples = [(sample_record(None), {"image.npy": npy(np.full((3, 3), 7.0, dtype=np.float32))})]
    assert_processed(send(device_a, drift_package(device_a.device, samples=samples)))
    assert np.asarray(stored_image(DriftSample.objects.get().image_key)).max() == 0


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinite"),
        (np.zeros((4, 4, 2), dtype=np.float32), "H×W×C"),
        (np.zeros(16, dtype=np.float32), "H×W×C"),
        (np.zeros((0, 4), dtype=np.float32), "no pixels"),
        (np.zeros((20, 10), dtype=np.float32), "over the limit of 100"),
    ],
)
def test_an_image_array_that_cannot_be_an_image_fails_the_package(send, device_a, settings, array, fragment):
    settings.PACKAGE_MAX_IMAGE_PIXELS = 100
    sample = sample_record(None)
    package = send(device_a, drift_package(device_a.device, samples=[(sample, {"image.npy": npy(array)})]))
    assert_failed(package, f"samples/{sample['id']}/image.npy", fragment)
    assert not DriftSample.objects.exists()


def test_an_image_array_that_is_not_a_numeric_npy_fails_the_package(send, device_a):
    sample = sample_record(None)
    package = send(device_a, drift_package(device_a.device, samples=[(sample, {"image.npy": npy(np.array(["a"]))})]))
    assert_failed(package, f"samples/{sample['id']}/image.npy", "numeric array")


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((2, 3), dtype=np.float32), "1-D array"),
        (np.zeros(4097, dtype=np.float32), "1 to 4096 values"),
        (np.zeros(0, dtype=np.float32), "1 to 4096 values"),
        (np.array([1.0, np.inf], dtype=np.float32), "infinite"),
        (np.array([1.0, 1e300]), "out-of-float32-range"),
    ],
)
def test_a_feature_vector_that_is_not_a_short_finite_1d_array_fails_the_package(send, device_a, array, fragment):
    sample = sample_record(None)
    package = send(device_a, drift_package(device_a.device, samples=[(sample, {"features.npy": npy(array)})]))
    assert_failed(package, f"samples/{sample['id']}/features.npy", fragment)


def test_integer_and_float64_features_are_kept_as_float32(send, device_a):
    sample = sample_record(None)
    features = {"features.npy": npy(np.array([1, 2, 300], dtype=np.int64))}
    assert_processed(send(device_a, drift_package(device_a.device, samples=[(sample, features)])))
    stored = DriftSample.objects.get().features
    assert np.frombuffer(bytes(stored), dtype="<f4").tolist() == [1.0, 2.0, 300.0]


def test_a_sample_with_two_images_fails_the_package(send, device_a):
    sample = sample_record(None)
    files = {"image.png": png(), "image.npy": npy(np.eye(3, dtype=np.float32))}
    package = send(device_a, drift_package(device_a.device, samples=[(sample, files)]))
    assert_failed(package, "one image at most", f"samples/{sample['id']}/image.png")


def test_a_corrupt_or_mislabelled_sample_image_fails_naming_it(send, device_a):
    sample = sample_record(None)
    corrupt = send(device_a, drift_package(device_a.device, samples=[(sample, {"image.png": png()[:30]})]))
    assert_failed(corrupt, f"samples/{sample['id']}/image.png", "cannot be read")
    jpeg = io.BytesIO()
    Image.new("L", (4, 4)).save(jpeg, format="JPEG")
    mislabelled = send(device_a, drift_package(device_a.device, samples=[(sample, {"image.png": jpeg.getvalue()})]))
    assert_failed(mislabelled, f"samples/{sample['id']}/image.png", "JPEG", "not PNG")


def test_a_bad_attachment_fails_the_whole_package_and_leaves_no_files(send, device_a):
    event = event_record()
    good = (sample_record(event), {"image.png": png(), "notes.txt": b"fine"})
    bad = (sample_record(event), {"features.npy": b"not an npy file"})
    package = send(device_a, drift_package(device_a.device, event, [good, bad]))
    assert_failed(package, f"samples/{bad[0]['id']}/features.npy")
    assert (DriftEvent.objects.count(), DriftSample.objects.count()) == (0, 0)
    assert drift_files(device_a.device) == []


# --- members, schemas and manifest records ------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    [
        "metrics.jsonl",
        "samples/not-a-uuid.json",
        f"samples/{uuid.uuid4()}/nested/image.png",
        f"images/{uuid.uuid4()}.png",
        "event.jsonl",
    ],
)
def test_a_drift_event_package_with_a_foreign_member_fails_naming_it(send, device_a, member):
    archive = drift_package(device_a.device, event_record(), extra_files=[(member, b"{}")])
    assert_failed(send(device_a, archive), repr(member), "drift_event package")
    assert not DriftEvent.objects.exists()


@pytest.mark.parametrize("member", ["event.json", "event/image.png", "state.json"])
def test_a_quarantine_package_with_a_foreign_member_fails_naming_it(send, device_a, member):
    archive = drift_package(device_a.device, samples=[(sample_record(None), {})], extra_files=[(member, b"{}")])
    assert_failed(send(device_a, archive), repr(member), "quarantine package")
    assert not DriftSample.objects.exists()


def test_a_drift_event_package_without_its_event_fails(send, device_a):
    archive = drift_package(device_a.device, samples=[(sample_record(None), {})], kind="drift_event")
    assert_failed(send(device_a, archive), "must hold event.json")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"created": None}, ["event.json at created"]),
        ({"created": "2026-13-40T00:00:00Z"}, ["event.json at created", "date-time"]),
        ({"id": "not-a-uuid"}, ["event.json at id", "uuid"]),
        ({"model_version": "v" * 81}, ["event.json at model_version", "too long"]),
        ({"detector": 3}, ["event.json at detector", "not of type 'string'"]),
    ],
)
def test_an_event_that_breaks_the_schema_fails_naming_the_field(send, device_a, change, fragments):
    event = {**event_record(), **change}
    archive = drift_package(device_a.device, event, records=[str(uuid.uuid4())])
    assert_failed(send(device_a, archive), *fragments)


def test_an_event_without_a_created_time_fails_naming_it(send, device_a):
    event = event_record()
    del event["created"]
    assert_failed(send(device_a, drift_package(device_a.device, event)), "event.json", "'created' is a required")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"confidence": 1.5}, ["at confidence", "greater than the maximum"]),
        ({"confidence": "high"}, ["at confidence"]),
        ({"label": 7}, ["at label", "not of type 'string'"]),
        ({"event_id": "nope"}, ["at event_id", "uuid"]),
        ({"reasons": "far"}, ["at reasons"]),
        ({"neighbour_distance": -1}, ["at neighbour_distance"]),
        ({"label": "nul\u0000"}, ["NUL character"]),
    ],
)
def test_a_sample_that_breaks_the_schema_fails_naming_the_field(send, device_a, change, fragments):
    sample = {**sample_record(None), **change}
    package = send(device_a, drift_package(device_a.device, samples=[(sample, {})]))
    assert_failed(package, f"samples/{sample['id']}.json", *fragments)
    assert not DriftSample.objects.exists()


def test_a_sample_without_an_event_id_field_fails_naming_it(send, device_a):
    sample = sample_record(None)
    del sample["event_id"]
    package = send(device_a, drift_package(device_a.device, samples=[(sample, {})]))
    assert_failed(package, f"samples/{sample['id']}.json", "'event_id' is a required")


def test_a_sample_whose_id_is_not_the_one_in_its_path_fails(send, device_a):
    sample, path_id = sample_record(None), str(uuid.uuid4())
    files = [(f"samples/{path_id}.json", json.dumps(sample).encode())]
    package = send(device_a, build(device_a.device, "quarantine", files, records=[path_id]))
    assert_failed(package, f"samples/{path_id}.json", "not the id in the member's path")


def test_an_attachment_of_a_sample_the_package_does_not_hold_fails(send, device_a):
    orphan = str(uuid.uuid4())
    archive = drift_package(device_a.device, event_record(), extra_files=[(f"samples/{orphan}/image.png", png())])
    assert_failed(send(device_a, archive), f"samples/{orphan}/image.png", f"no samples/{orphan}.json")


def test_a_record_the_manifest_lists_but_the_package_lacks_fails(send, device_a):
    event, missing = event_record(), str(uuid.uuid4())
    archive = drift_package(device_a.device, event, records=[event["id"], missing])
    assert_failed(send(device_a, archive), missing, "manifest.records")


def test_a_record_the_manifest_does_not_list_fails(send, device_a):
    event, sample = event_record(), sample_record(None)
    archive = drift_package(device_a.device, event, [(sample, {})], records=[event["id"]])
    assert_failed(send(device_a, archive), f"samples/{sample['id']}.json", "not listed in manifest.records")


# --- packages built by the real edge client -----------------------------------------------------


def client_archive(client, kind: str, items) -> Archive:
    built = client._build_package(kind, items)
    return Archive(built.id, built.kind, built.path.read_bytes())


def test_drift_and_quarantine_packages_from_the_real_edge_pipeline_are_stored_and_linked(send, device_a, tmp_path):
    from edge_client.datagen import DriftSchedule, novel_class_stream
    from edge_client.extractors import TFLiteExtractor
    from edge_client.pipeline import AdaptivePipeline, bootstrap, monitors_from_config
    from edge_client.quarantine import Quarantine
    from edge_client.state import StateManager
    from edge_client.store import DRIFT_EVENT, QUARANTINE_SAMPLE, Store
    from edge_client.sync import SyncClient

    store = Store(tmp_path / "outbox.sqlite3")
    store.set_meta("device_id", str(device_a.device.pk))
    extractor = TFLiteExtractor.shipped()
    transform, knn = bootstrap(extractor)
    monitors, statistics = monitors_from_config({}, n_classes=10)
    pipeline = AdaptivePipeline(
        extractor,
        transform,
        knn,
        monitors,
        store=store,
        image_statistic=statistics,
        quarantine=Quarantine(tmp_path / "quarantine", store=store, model_version="digits@3"),
        state=StateManager(tmp_path / "state"),
        adapt_every=0,
        model_version="digits@3",
    )
    for image, _, _ in novel_class_stream(
        800, DriftSchedule("abrupt", onset=600), known=range(10), source="synthetic", seed=3
    ):
        pipeline.process(image)

    client = SyncClient("http://sphere.invalid", tmp_path / "token", store, work_dir=tmp_path / "outgoing")
    events = store.pending(DRIFT_EVENT, limit=100)
    loose = store.pending(QUARANTINE_SAMPLE, limit=100, unparented=True)
    assert events and loose, "the drifting stream must raise events and quarantine samples"
    packages = [send(device_a, client_archive(client, "drift_event", [e, *store.children(e.id)])) for e in events]
    packages.append(send(device_a, client_archive(client, "quarantine", loose)))
    assert [package.error for package in packages if package.status != PackageStatus.PROCESSED] == []

    stored_events = {str(event.client_id): event for event in DriftEvent.objects.all()}
    assert set(stored_events) == {event.id for event in events}
    for event in events:
        stored = stored_events[event.id]
        assert (stored.detector, stored.model_version) == (event.payload["detector"], "digits@3")
        assert stored.payload["scores"] == event.payload["scores"]
    samples = [sample for event in events for sample in store.children(event.id)] + loose
    assert DriftSample.objects.count() == len(samples)
    for sent in samples:
        _assert_sample_stored_as_sent(sent, store.attachments(sent.id))


def _assert_sample_stored_as_sent(sent, attachments) -> None:
    stored = DriftSample.objects.select_related("event").get(client_id=sent.id)
    linked_to = str(stored.event.client_id) if stored.event else None
    assert linked_to == sent.parent
    assert (stored.label, stored.confidence, stored.payload["reasons"]) == (
        sent.payload["label"],
        sent.payload["confidence"],
        sent.payload["reasons"],
    )
    features = np.load(io.BytesIO(attachments["features.npy"]), allow_pickle=False)
    assert np.array_equal(np.frombuffer(bytes(stored.features), dtype="<f4"), features)
    pixels = np.load(io.BytesIO(attachments["image.npy"]), allow_pickle=False)
    image = stored_image(stored.image_key)
    assert (image.format, image.mode, image.size) == ("PNG", "L", (pixels.shape[1], pixels.shape[0]))
    assert np.asarray(image).argmax() == pixels.argmax()


def test_a_sample_the_client_split_off_its_event_package_is_linked_when_it_arrives(send, device_a, tmp_path):
    from edge_client.quarantine import Quarantine
    from edge_client.store import DRIFT_EVENT, Store
    from edge_client.sync import SyncClient

    store = Store(tmp_path / "outbox.sqlite3")
    store.set_meta("device_id", str(device_a.device.pk))
    event_id = store.append(DRIFT_EVENT, {"detector": "knn_distance", "model_version": "digits@3"})
    quarantine = Quarantine(tmp_path / "quarantine", store=store, model_version="digits@3")
    rgb = np.linspace(0.0, 1.0, 4 * 6 * 3).reshape(4, 6, 3)
    first, second = (
        quarantine.add(
            np.arange(16.0) * k, label=k, confidence=0.5, distance=4.0, reasons=["far"], event_id=event_id, image=rgb
        )
        for k in (1, 2)
    )
    event = store.get(event_id)
    client = SyncClient("http://sphere.invalid", tmp_path / "token", store, work_dir=tmp_path / "outgoing")
    # After a 413 the client sends the event with its first samples; the rest follow later.
    assert_processed(send(device_a, client_archive(client, "quarantine", [store.get(second.id)])))
    assert_processed(send(device_a, client_archive(client, "drift_event", [event, store.get(first.id)])))

    stored = DriftEvent.objects.get()
    assert set(stored.samples.values_list("client_id", flat=True)) == {uuid.UUID(first.id), uuid.UUID(second.id)}
    row = DriftSample.objects.get(client_id=second.id)
    assert np.frombuffer(bytes(row.features), dtype="<f4").tolist() == (np.arange(16.0) * 2).tolist()
    image = stored_image(row.image_key)
    assert (image.mode, image.size) == ("RGB", (6, 4))
    assert (np.asarray(image)[0, 0, 0], np.asarray(image)[-1, -1, -1]) == (0, 255)
