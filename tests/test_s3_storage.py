"""Object storage on S3: the settings' layout of areas, and packages going through a real S3
server (moto on loopback, ``s3_storages`` in conftest.py) from upload to processing.

What moto checks is listed in tests/s3_server.py: it refuses an unsigned GET of a private
object, but does not verify signatures, so the privacy test checks the ACLs and the absence of a
bucket policy as well as the refusal.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from devices.ingest import uploads
from devices.models import Package, PackageStatus, Telemetry
from devices.tests.packages import PACKAGES, build, metrics_lines, upload
from sphere.storage import storage_settings

BASE_DIR = Path(__file__).resolve().parent.parent
AREAS = ("packages", "drift_images", "prediction_images", "oplogs", "artifacts")
S3_VARIABLES = ("S3_BUCKET", "S3_PREFIX", "S3_ENDPOINT_URL", "S3_REGION", "S3_SIGNED_URL_SECONDS")
MiB = 1024 * 1024


# --- The layout of areas (settings) ------------------------------------------------------------


@pytest.fixture
def s3_env(monkeypatch):
    """A clean S3_* environment: ``s3_env(S3_BUCKET="x", ...)`` sets exactly these."""
    for name in [*S3_VARIABLES, *(f"S3_BUCKET_{area.upper()}" for area in AREAS)]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)

    def set_env(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_without_s3_bucket_every_area_is_a_folder_under_media_root(s3_env, tmp_path):
    s3_env()
    for area in AREAS:
        assert storage_settings(area, tmp_path) == {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / area), "allow_overwrite": True},
        }
    assert storage_settings(None, tmp_path)["OPTIONS"] == {"location": str(tmp_path), "allow_overwrite": False}


def test_with_s3_bucket_every_area_is_its_own_prefix_in_that_bucket(s3_env, tmp_path):
    s3_env(S3_BUCKET="sphere", S3_PREFIX="site-a/", S3_ENDPOINT_URL="http://minio:9000", S3_REGION="eu-west-1")
    for area in AREAS:
        entry = storage_settings(area, tmp_path)
        assert entry["BACKEND"] == "storages.backends.s3.S3Storage"
        options = entry["OPTIONS"]
        assert (options["bucket_name"], options["location"]) == ("sphere", f"site-a/{area}/")
        assert (options["endpoint_url"], options["region_name"]) == ("http://minio:9000", "eu-west-1")
    default = storage_settings(None, tmp_path)["OPTIONS"]
    assert (default["bucket_name"], default["location"]) == ("sphere", "site-a/")


def test_an_area_with_its_own_bucket_keeps_its_files_at_that_buckets_root(s3_env, tmp_path):
    s3_env(S3_BUCKET="sphere", S3_PREFIX="site-a/", S3_BUCKET_OPLOGS="sphere-logs", S3_BUCKET_DRIFT_IMAGES="drift")
    places = {area: storage_settings(area, tmp_path)["OPTIONS"] for area in AREAS}
    assert {area: (o["bucket_name"], o["location"]) for area, o in places.items()} == {
        "packages": ("sphere", "site-a/packages/"),
        "drift_images": ("drift", "site-a/"),
        "prediction_images": ("sphere", "site-a/prediction_images/"),
        "oplogs": ("sphere-logs", "site-a/"),
        "artifacts": ("sphere", "site-a/artifacts/"),
    }


def test_s3_objects_are_private_and_urls_signed_for_s3_signed_url_seconds(s3_env, tmp_path):
    s3_env(S3_BUCKET="sphere", S3_SIGNED_URL_SECONDS="60")
    options = storage_settings("packages", tmp_path)["OPTIONS"]
    assert options["default_acl"] is None  # no ACL sent: only the bucket owner may read
    assert options["querystring_auth"] is True
    assert options["querystring_expire"] == 60
    assert options["file_overwrite"] is True
    s3_env(S3_SIGNED_URL_SECONDS="5")
    with pytest.raises(ImproperlyConfigured, match="S3_SIGNED_URL_SECONDS=5 is below the minimum 10"):
        storage_settings("packages", tmp_path)


def test_the_settings_module_lays_out_storages_from_the_environment(tmp_path):
    """sphere/settings.py itself, imported fresh under S3 variables (as a deployment starts)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("S3_")}
    env.update(
        DATA_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="sphere.settings",
        S3_BUCKET="sphere",
        S3_BUCKET_PREDICTION_IMAGES="sphere-images",
        S3_SECRET_ACCESS_KEY_FILE=str(tmp_path / "s3-secret"),
    )
    (tmp_path / "s3-secret").write_text("from-a-file\n")
    code = "import json; from sphere import settings as s; print(json.dumps([s.S3_BUCKET, s.STORAGES]))"
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    bucket, configured = json.loads(result.stdout)
    assert bucket == "sphere"
    places = {
        name: (entry["OPTIONS"]["bucket_name"], entry["OPTIONS"]["location"])
        for name, entry in configured.items()
        if name != "staticfiles"
    }
    assert places == {
        "default": ("sphere", ""),
        "packages": ("sphere", "packages/"),
        "drift_images": ("sphere", "drift_images/"),
        "prediction_images": ("sphere-images", ""),
        "oplogs": ("sphere", "oplogs/"),
        "artifacts": ("sphere", "artifacts/"),
    }
    assert {entry["OPTIONS"]["secret_key"] for name, entry in configured.items() if name != "staticfiles"} == {
        "from-a-file"
    }


# --- Packages through a real S3 server ---------------------------------------------------------


def metrics_archive(device, count: int = 3):
    beats = [{"id": str(uuid.uuid4()), "cpu_percent": 12.5, "sent_at": "2026-11-23T11:00:00Z"} for _ in range(count)]
    return build(device, "metrics", [("metrics.jsonl", metrics_lines(*beats))], records=[b["id"] for b in beats])


def test_every_area_writes_under_its_own_prefix_or_into_its_own_bucket(s3_storages):
    for area in AREAS:
        storages[area].save("probe/hello.txt", ContentFile(f"hello {area}".encode()))
    shared = s3_storages.keys(s3_storages.bucket)
    assert shared == sorted(f"{area}/probe/hello.txt" for area in AREAS if area not in s3_storages.own_buckets)
    for area, bucket in s3_storages.own_buckets.items():
        assert s3_storages.keys(bucket) == ["probe/hello.txt"]
        assert s3_storages.read(area, "probe/hello.txt") == f"hello {area}".encode()


def test_an_uploaded_package_lands_under_the_packages_prefix_and_is_processed_from_s3(
    api, device_a, s3_storages, django_capture_on_commit_callbacks, tmp_path
):
    archive = metrics_archive(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, device_a, archive)
    assert response.status_code == 201, response.content
    package = Package.objects.get()
    assert package.status == PackageStatus.PROCESSED, package.error
    assert Telemetry.objects.filter(device=device_a.device).count() == 3
    assert package.storage_key.startswith(f"{device_a.device.pk}/{archive.package_id}/")
    assert s3_storages.keys(s3_storages.bucket) == [f"packages/{package.storage_key}"]
    assert s3_storages.read("packages", package.storage_key) == archive.body
    assert not any(path.is_file() for path in (tmp_path / "media").rglob("*")), "nothing may reach the local disk"


def test_a_package_bigger_than_one_s3_part_streams_through_the_non_seekable_reader(api, device_a, s3_storages):
    # boto3 switches to a multipart upload past 8 MiB; it must not need to seek or size the body.
    assert not uploads.HashingReader(None, 1).seekable()
    body = os.urandom(9 * MiB)
    calls = record_s3_calls(storages["packages"])
    response = api.post(
        PACKAGES,
        data=body,
        content_type="application/gzip",
        HTTP_X_PACKAGE_ID=str(uuid.uuid4()),
        HTTP_X_PACKAGE_KIND="metrics",
        HTTP_X_PACKAGE_SHA256=hashlib.sha256(body).hexdigest(),
        **device_a.auth,
    )
    assert response.status_code == 201, response.content
    assert calls == ["CreateMultipartUpload", "UploadPart", "UploadPart", "CompleteMultipartUpload"]
    package = Package.objects.get()
    assert package.size == len(body)
    stored = s3_storages.read("packages", package.storage_key)
    assert len(stored) == len(body) and hashlib.sha256(stored).hexdigest() == package.sha256


def test_a_replayed_upload_stores_no_second_object(api, device_a, s3_storages, django_capture_on_commit_callbacks):
    archive = metrics_archive(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, device_a, archive).status_code == 201
    replay = upload(api, device_a, archive)
    assert replay.status_code == 200, replay.content
    assert replay.json()["status"] == "processed"
    assert len(s3_storages.keys(s3_storages.bucket, "packages/")) == 1


def test_a_body_that_does_not_match_its_sha256_leaves_no_object(api, device_a, s3_storages):
    archive = metrics_archive(device_a.device)
    response = upload(api, device_a, archive, HTTP_X_PACKAGE_SHA256="0" * 64)
    assert response.status_code == 400, response.content
    assert "sha256" in response.json()["detail"]
    assert not Package.objects.exists()
    assert s3_storages.keys(s3_storages.bucket) == []


def test_a_body_over_the_limit_stops_mid_upload_and_leaves_no_object_or_unfinished_parts(
    device_a, s3_storages, settings
):
    # Called below the view, whose Content-Length check would refuse this body before reading
    # it: here the reader's own limit stops the stream after boto3 began a multipart upload.
    settings.PACKAGE_MAX_BYTES = 9 * MiB
    body = os.urandom(10 * MiB)
    header = uploads.Upload(uuid.uuid4(), "metrics", hashlib.sha256(body).hexdigest())
    calls = record_s3_calls(storages["packages"])
    with pytest.raises(uploads.UploadError) as refused:
        uploads.receive_package(device_a.device, header, NonSeekableBody(body))
    assert refused.value.status == 413
    # boto3 may have sent the first 8 MiB part in a thread before the reader refused the rest.
    assert calls[0] == "CreateMultipartUpload" and "AbortMultipartUpload" in calls, calls
    assert "CompleteMultipartUpload" not in calls
    assert s3_storages.keys(s3_storages.bucket) == []
    assert s3_storages.client.list_multipart_uploads(Bucket=s3_storages.bucket).get("Uploads", []) == []


def test_stored_objects_are_private(api, device_a, s3_storages, django_capture_on_commit_callbacks):
    archive = metrics_archive(device_a.device)
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, device_a, archive).status_code == 201
    bucket, key = s3_storages.object_key("packages", Package.objects.get().storage_key)
    client = s3_storages.client
    owner = client.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    for acl in (client.get_object_acl(Bucket=bucket, Key=key), client.get_bucket_acl(Bucket=bucket)):
        assert [(g["Grantee"].get("ID"), g["Permission"]) for g in acl["Grants"]] == [(owner, "FULL_CONTROL")]
    with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
        client.get_bucket_policy(Bucket=bucket)
    # An unsigned GET is refused; the storage's signed URL is served.
    assert http_get(f"{s3_storages.endpoint}/{bucket}/{key}")[0] == 403
    signed = storages["packages"].url(Package.objects.get().storage_key)
    assert "Signature=" in signed or "X-Amz-Signature=" in signed
    assert http_get(signed) == (200, archive.body)


def record_s3_calls(storage) -> list[str]:
    """The S3 operations ``storage`` calls from now on, in order (its client is shared by the
    transfer threads, so multipart parts are seen too)."""
    calls = []
    storage.connection.meta.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    return calls


class NonSeekableBody:
    """A request body as the server hands it over: read() only."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk, self.offset = self.data[self.offset : end], min(end, len(self.data))
        return chunk


def http_get(url: str) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
