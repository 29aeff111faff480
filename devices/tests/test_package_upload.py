"""POST /api/v1/device/packages: the answers of docs/device-protocol.md, and what is stored.

The archive's contents are the worker's business (test_package_safety.py); here the endpoint
stores a whole, hashed archive once, answers replays and conflicts, refuses bad headers and
oversized bodies before anything is kept, and only lets devices in.
"""

import asyncio
import hashlib
import io
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core import signals
from django.core.files.base import File
from django.core.files.storage import storages
from django.db import close_old_connections

from devices import services
from devices.ingest import uploads
from devices.models import Package, PackageStatus, Telemetry
from devices.tests.packages import (
    PACKAGES,
    Archive,
    build,
    incompressible_metrics,
    metrics_lines,
    metrics_package,
    stored_objects,
    upload,
)

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


def stored_bytes(package: Package) -> bytes:
    with storages["packages"].open(package.storage_key, "rb") as stored:
        return stored.read()


def detail(response) -> str:
    assert response["Content-Type"] == "application/json", response.content
    return response.json()["detail"]


# --- Accepted ---------------------------------------------------------------------------------


def test_a_package_is_stored_answered_201_then_processed(api, device_a, django_capture_on_commit_callbacks):
    archive = metrics_package(device_a.device, beats=3)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, device_a, archive)
    assert response.status_code == 201, response.content
    assert response.json() == {"id": archive.package_id, "status": "received"}
    package = Package.objects.get()
    assert package.attempts == 1, "processing was queued once, after commit"
    assert (package.device, str(package.package_id), package.kind) == (device_a.device, archive.package_id, "metrics")
    assert (package.sha256, package.size) == (archive.sha256, len(archive.body))
    assert stored_bytes(package) == archive.body
    assert package.status == PackageStatus.PROCESSED, package.error
    assert Telemetry.objects.filter(device=device_a.device).count() == 3


def test_a_package_larger_than_the_api_body_limit_is_accepted_up_to_the_package_limit(
    api, device_a, django_capture_on_commit_callbacks
):
    archive = incompressible_metrics(device_a.device, 3 * MiB)
    assert django_settings.API_MAX_BODY_BYTES < len(archive.body) < django_settings.PACKAGE_MAX_BYTES
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, device_a, archive)
    assert response.status_code == 201, response.content
    package = Package.objects.get()
    assert package.size == len(archive.body) and stored_bytes(package) == archive.body
    assert package.status == PackageStatus.PROCESSED, package.error
    assert Telemetry.objects.count() == package.summary["stored"] > 0


@pytest.mark.parametrize("content_type", ["application/x-gzip", "application/gzip; charset=binary", "Application/GZIP"])
def test_any_spelling_of_the_gzip_media_type_is_accepted(api, device_a, content_type):
    archive = metrics_package(device_a.device)
    response = api.post(PACKAGES, archive.body, content_type=content_type, **device_a.auth, **archive.headers())
    assert response.status_code == 201, response.content


def test_the_sha256_header_is_read_case_insensitively_and_stored_lowercase(api, device_a):
    archive = metrics_package(device_a.device)
    response = upload(api, device_a, archive, HTTP_X_PACKAGE_SHA256=archive.sha256.upper())
    assert response.status_code == 201, response.content
    assert Package.objects.get().sha256 == archive.sha256
    assert upload(api, device_a, archive).status_code == 200, "a replay in lowercase is the same package"


# --- Replays and conflicts --------------------------------------------------------------------


def test_a_replay_answers_200_with_the_current_status_and_stores_nothing(
    api, device_a, django_capture_on_commit_callbacks
):
    archive = metrics_package(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, device_a, archive).status_code == 201
    objects = stored_objects()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        replay = upload(api, device_a, archive)
    assert replay.status_code == 200, replay.content
    assert replay.json() == {"id": archive.package_id, "status": "processed"}
    assert callbacks == [], "nothing is queued again"
    assert stored_objects() == objects and len(objects) == 1
    package = Package.objects.get()
    assert package.attempts == 1, "processed once"
    assert Telemetry.objects.count() == 2


def test_a_replay_before_processing_answers_received(api, device_a):
    archive = metrics_package(device_a.device)
    assert upload(api, device_a, archive).status_code == 201
    replay = upload(api, device_a, archive)
    assert replay.status_code == 200 and replay.json()["status"] == "received"
    assert len(stored_objects()) == 1 and Package.objects.count() == 1


def test_a_replay_of_a_failed_package_answers_failed(api, device_a, django_capture_on_commit_callbacks):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", b"{not json\n")])
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, device_a, archive).status_code == 201
    replay = upload(api, device_a, archive)
    assert replay.status_code == 200 and replay.json()["status"] == "failed"


def test_the_same_id_with_another_sha256_is_refused_with_409_and_the_first_archive_is_untouched(api, device_a):
    first = metrics_package(device_a.device)
    assert upload(api, device_a, first).status_code == 201
    objects = stored_objects()
    second = metrics_package(device_a.device, manifest={"id": first.package_id})
    assert second.package_id == first.package_id and second.sha256 != first.sha256
    response = upload(api, device_a, second)
    assert response.status_code == 409, response.content
    assert first.package_id in detail(response) and "another sha256" in detail(response)
    assert stored_objects() == objects
    package = Package.objects.get()
    assert package.sha256 == first.sha256 and stored_bytes(package) == first.body


@pytest.mark.parametrize("same_bytes, status", [(True, 200), (False, 409)])
def test_a_racing_upload_of_the_same_id_keeps_only_the_first_archive(api, device_a, monkeypatch, same_bytes, status):
    first = metrics_package(device_a.device)
    assert upload(api, device_a, first).status_code == 201
    objects = stored_objects()
    # The other upload commits between this one's check and its insert.
    known, checks = uploads._known, []
    monkeypatch.setattr(uploads, "_known", lambda *args: known(*args) if checks.append(1) or len(checks) > 1 else None)
    racing = first if same_bytes else metrics_package(device_a.device, manifest={"id": first.package_id})
    response = upload(api, device_a, racing)
    assert response.status_code == status, response.content
    assert len(checks) == 2, "the insert lost, and the winner was read back"
    assert stored_objects() == objects
    assert Package.objects.get().sha256 == first.sha256


# --- Refused before anything is stored --------------------------------------------------------


@pytest.mark.parametrize(
    "header, value, named",
    [
        ("HTTP_X_PACKAGE_ID", None, "X-Package-Id"),
        ("HTTP_X_PACKAGE_ID", "not-a-uuid", "X-Package-Id"),
        ("HTTP_X_PACKAGE_ID", "", "X-Package-Id"),
        ("HTTP_X_PACKAGE_KIND", None, "X-Package-Kind"),
        ("HTTP_X_PACKAGE_KIND", "pictures", "X-Package-Kind"),
        ("HTTP_X_PACKAGE_KIND", "METRICS", "X-Package-Kind"),
        ("HTTP_X_PACKAGE_SHA256", None, "X-Package-Sha256"),
        ("HTTP_X_PACKAGE_SHA256", "abc123", "X-Package-Sha256"),
        ("HTTP_X_PACKAGE_SHA256", "g" * 64, "X-Package-Sha256"),
        ("HTTP_X_PACKAGE_SHA256", "0" * 65, "X-Package-Sha256"),
    ],
)
def test_a_missing_or_malformed_header_is_refused_with_400_naming_it(api, device_a, header, value, named):
    response = upload(api, device_a, metrics_package(device_a.device), **{header: value})
    assert response.status_code == 400, response.content
    assert named in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_a_body_whose_sha256_is_not_the_header_is_refused_with_400_and_nothing_is_kept(api, device_a):
    archive = metrics_package(device_a.device)
    claimed = hashlib.sha256(b"something else").hexdigest()
    response = upload(api, device_a, archive, HTTP_X_PACKAGE_SHA256=claimed)
    assert response.status_code == 400, response.content
    assert f"The body's sha256 is {archive.sha256}, not X-Package-Sha256 {claimed}" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", "application/x-tar", ""])
def test_a_body_that_is_not_application_gzip_is_refused_with_415(api, device_a, content_type):
    archive = metrics_package(device_a.device)
    response = api.generic("POST", PACKAGES, archive.body, content_type, **device_a.auth, **archive.headers())
    assert response.status_code == 415, response.content
    assert "Content-Type must be application/gzip" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_a_body_declared_over_the_package_limit_is_refused_with_413_before_it_is_read(api, device_a):
    archive = metrics_package(device_a.device)
    declared = str(django_settings.PACKAGE_MAX_BYTES + 1)
    response = upload(api, device_a, archive, CONTENT_LENGTH=declared)
    assert response.status_code == 413, response.content
    assert f"{django_settings.PACKAGE_MAX_BYTES} bytes" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_a_body_over_a_lowered_package_limit_is_refused_with_413(api, device_a, settings):
    settings.PACKAGE_MAX_BYTES = 64 * 1024
    archive = incompressible_metrics(device_a.device, 80 * 1024)
    response = upload(api, device_a, archive)
    assert response.status_code == 413, response.content
    assert "65536 bytes" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def receive(persona, archive: Archive, body) -> uploads.Received:
    upload = uploads.check_headers(
        package_id=archive.package_id, kind=archive.kind, sha256=archive.sha256, content_type="application/gzip"
    )
    return uploads.receive_package(persona.device, upload, body)


def test_a_body_streamed_past_the_limit_is_cut_with_413_and_its_partial_object_removed(device_a, settings):
    settings.PACKAGE_MAX_BYTES = 64 * 1024
    archive = incompressible_metrics(device_a.device, 200 * 1024)
    body = io.BytesIO(archive.body)
    with pytest.raises(uploads.UploadError, match="exceeds the limit of 65536 bytes") as refused:
        receive(device_a, archive, body)
    assert refused.value.status == 413
    assert body.tell() <= 64 * 1024 + File.DEFAULT_CHUNK_SIZE < len(archive.body), "reading stopped at the limit"
    assert stored_objects() == [] and not Package.objects.exists()


class DroppedConnection(io.RawIOBase):
    """A request body whose client goes away after ``size`` bytes."""

    def __init__(self, data: bytes, size: int):
        self.body, self.size = io.BytesIO(data), size

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.body.tell() >= self.size:
            raise OSError("connection reset by peer")
        return self.body.readinto(memoryview(buffer)[: self.size - self.body.tell()])


def test_an_upload_the_client_abandons_half_way_leaves_no_partial_object(device_a):
    archive = incompressible_metrics(device_a.device, 200 * 1024)
    with pytest.raises(OSError, match="connection reset"):
        receive(device_a, archive, DroppedConnection(archive.body, 100 * 1024))
    assert stored_objects() == [] and not Package.objects.exists()


# --- Through the ASGI application, as in production -------------------------------------------


@contextmanager
def database_connection_kept():
    """Django closes the database connection when a request starts and ends; the test's
    transaction lives on it, so keep it, as django.test.Client does."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield
    finally:
        for signal in (signals.request_started, signals.request_finished):
            signal.connect(close_old_connections)


def asgi_post(persona, archive: Archive, chunks, *, content_length: int | None = None):
    """POST ``chunks`` to the packages endpoint through sphere.asgi.application, streamed
    without Content-Length unless given; returns the answer and how many chunks were read."""
    from sphere.asgi import application

    headers = [(b"host", b"testserver"), (b"content-type", b"application/gzip")]
    headers += [(name[5:].replace("_", "-").lower().encode(), value.encode()) for name, value in persona.auth.items()]
    headers += [
        (name[5:].replace("_", "-").lower().encode(), value.encode()) for name, value in archive.headers().items()
    ]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PACKAGES,
        "raw_path": PACKAGES.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    chunks, read, sent = list(chunks), [], []

    async def receive():
        if len(read) < len(chunks):
            read.append(chunks[len(read)])
            return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(chunks)}
        await asyncio.Event().wait()  # the client stays connected until the answer

    async def send(message):
        sent.append(message)

    with database_connection_kept():
        async_to_sync(application)(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return status, body, len(read)


def split(data: bytes, size: int = MiB) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def test_through_asgi_a_streamed_package_over_the_api_limit_reaches_the_view(
    device_a, django_capture_on_commit_callbacks
):
    archive = incompressible_metrics(device_a.device, 3 * MiB)
    with django_capture_on_commit_callbacks(execute=True):
        status, body, _ = asgi_post(device_a, archive, split(archive.body))
    assert status == 201, body
    package = Package.objects.get()
    assert stored_bytes(package) == archive.body
    assert package.status == PackageStatus.PROCESSED, package.error


def test_through_asgi_a_stream_without_content_length_is_cut_once_it_passes_the_package_limit(device_a):
    archive = metrics_package(device_a.device)
    limit = django_settings.PACKAGE_MAX_BYTES
    chunks = [bytes(MiB)] * (2 * limit // MiB)
    status, body, read = asgi_post(device_a, archive, chunks)
    assert status == 413, body
    assert f"exceeds the limit of {limit} bytes".encode() in body
    assert read == limit // MiB + 1, "the rest of the stream was never read"
    assert stored_objects() == [] and not Package.objects.exists()


def test_through_asgi_a_declared_content_length_over_the_limit_is_refused_before_reading(device_a):
    archive = metrics_package(device_a.device)
    status, body, read = asgi_post(
        device_a, archive, [archive.body], content_length=django_settings.PACKAGE_MAX_BYTES + 1
    )
    assert status == 413, body
    assert read == 0
    assert stored_objects() == [] and not Package.objects.exists()


# --- Who may upload ---------------------------------------------------------------------------


def test_an_upload_without_a_token_is_refused_with_401(api, device_a):
    archive = metrics_package(device_a.device)
    response = api.post(PACKAGES, archive.body, content_type="application/gzip", **archive.headers())
    assert response.status_code == 401, response.content
    assert detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_an_upload_with_a_revoked_token_is_refused_with_401(api, device_a):
    services.revoke_credentials(device_a.device)
    response = upload(api, device_a, metrics_package(device_a.device))
    assert response.status_code == 401, response.content
    assert "revoked" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_an_operator_session_cannot_upload(operator_api, device_a):
    # 401, not 403: device endpoints know only bearer tokens, so a session is a missing token
    # (device-protocol.md: "401 only for a missing, unknown or revoked token"), as for heartbeats.
    archive = metrics_package(device_a.device)
    response = operator_api.post(PACKAGES, archive.body, content_type="application/gzip", **archive.headers())
    assert response.status_code == 401, response.content
    assert "credentials were not provided" in detail(response)
    assert stored_objects() == [] and not Package.objects.exists()


def test_get_is_not_allowed(api, device_a):
    response = api.get(PACKAGES, **device_a.auth)
    assert response.status_code == 405, response.content
    assert "GET" in detail(response)


def test_a_package_whose_manifest_names_another_device_is_accepted_then_failed_by_the_worker(
    api, device_a, device_b, django_capture_on_commit_callbacks
):
    beats = [{"id": str(uuid.uuid4()), "cpu_percent": 1.0}]
    archive = build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines(*beats))])
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, device_b, archive)
    assert response.status_code == 201, response.content
    package = Package.objects.get()
    assert package.device == device_b.device
    assert package.status == PackageStatus.FAILED
    assert f"The manifest names device {device_a.device.pk}, not the uploading device" in package.error
    assert not Package.objects.filter(device=device_a.device).exists()
    assert not Telemetry.objects.exists()


def test_package_ids_are_per_device(api, device_a, device_b, django_capture_on_commit_callbacks):
    first = metrics_package(device_a.device)
    same_id = metrics_package(device_b.device, manifest={"id": first.package_id})
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, device_a, first).status_code == 201
        response = upload(api, device_b, same_id)
    assert response.status_code == 201, response.content
    mine, theirs = Package.objects.get(device=device_a.device), Package.objects.get(device=device_b.device)
    assert str(mine.package_id) == str(theirs.package_id) == first.package_id
    assert (mine.sha256, theirs.sha256) == (first.sha256, same_id.sha256)
    assert mine.status == theirs.status == PackageStatus.PROCESSED, (mine.error, theirs.error)
    assert stored_bytes(mine) == first.body and stored_bytes(theirs) == same_id.body
    assert Telemetry.objects.filter(device=device_a.device).count() == 2
    assert Telemetry.objects.filter(device=device_b.device).count() == 2
    assert Path(storages["packages"].location, mine.storage_key) != Path(
        storages["packages"].location, theirs.storage_key
    )
