"""Operators open stored files at /files/<area>/<key> (sphere/files.py).

Each spec runs on both backends where the backend matters: local folders (the embedded
topology) and S3 on a real S3 server (``s3_storages``), where the view answers with a redirect
to a signed URL that ``download`` follows the way a browser would.
"""

import http.client
import io
import re
import time
import urllib.parse
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.urls import reverse
from PIL import Image

from sphere.files import is_safe_key

pytestmark = pytest.mark.django_db

AREA_PERMISSIONS = [
    ("packages", "devices.view_package", "dev-1/pkg-1/0a1b.package"),
    ("prediction_images", "devices.view_predictionimage", "dev-1/pred-1.png"),
    ("oplogs", "devices.view_operationallog", "dev-1/log-1.log"),
    ("drift_images", "drift.view_driftsample", "dev-1/sample-1.jpg"),
    ("artifacts", "labeling.view_datasetsnapshot", "snapshots/digits/v1.tar.gz"),
    # Same area, another prefix: model bundles open to those who may see model versions.
    ("artifacts", "registry.view_modelversion", "models/digits/digits-2-0123456789ab.tar.gz"),
]


@dataclass
class Fetched:
    status: int
    headers: dict  # lower-case names
    body: bytes
    redirected_to: str = ""


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """The personas' passwords are never checked here (sessions are forced): skip PBKDF2."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(params=["filesystem", "s3"])
def backend(request):
    if request.param == "s3":
        request.getfixturevalue("s3_storages")
    return request.param


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


def grant(user, *permissions: str):
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def staff_with(django_user_model, *permissions: str, username="stella", staff=True):
    user = django_user_model.objects.create_user(username, is_staff=staff)
    grant(user, *permissions)
    return user


def put(area: str, name: str, data: bytes) -> str:
    stored = storages[area].save(name, ContentFile(data))
    assert stored == name
    return stored


def image_bytes(size=(640, 480), format="PNG") -> bytes:
    output = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(output, format)
    return output.getvalue()


def file_url(area: str, key: str, **query) -> str:
    url = reverse("stored-file", kwargs={"area": area, "key": key})
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


def download(client, url: str, **extra) -> Fetched:
    """What a browser ends up with: the view's answer, or the object store's behind its redirect."""
    response = client.get(url, **extra)
    headers = {name.lower(): value for name, value in response.headers.items()}
    if response.status_code == 302 and response["Location"].startswith("http://127.0.0.1:"):
        fetched = http_get(response["Location"])
        fetched.redirected_to = response["Location"]
        return fetched
    # Reading a streamed body to the end closes the file, as a server does (and never call
    # close() again: that would end the test's database connection on PostgreSQL).
    body = response.getvalue()
    return Fetched(response.status_code, headers, body)


def http_get(url: str) -> Fetched:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Fetched(response.status, headers, response.read())
    finally:
        connection.close()


# --- Operators get files ---------------------------------------------------------------------


def test_an_operator_downloads_a_package_as_an_attachment(operator_client, backend):
    key = put("packages", "dev-1/pkg-1/0a1b.package", b"\x1f\x8b package bytes")
    got = download(operator_client, file_url("packages", key))
    assert got.status == 200, got.body
    assert got.body == b"\x1f\x8b package bytes"
    assert got.headers["content-type"] == "application/gzip"
    assert got.headers["content-disposition"] == 'attachment; filename="0a1b.package"'
    assert bool(got.redirected_to) == (backend == "s3")


def test_an_operator_sees_an_image_inline_with_its_type(operator_client, backend):
    data = image_bytes()
    key = put("prediction_images", "dev-1/pred-1.png", data)
    got = download(operator_client, file_url("prediction_images", key))
    assert got.status == 200, got.body
    assert got.body == data
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"] == 'inline; filename="pred-1.png"'


def test_local_files_are_served_privately_and_never_sniffed(operator_client):
    key = put("oplogs", "dev-1/page.html", b"<script>alert(1)</script>")
    response = operator_client.get(file_url("oplogs", key))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html"
    assert response["Content-Disposition"] == 'attachment; filename="page.html"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox"
    assert "private" in response["Cache-Control"]
    assert response.getvalue() == b"<script>alert(1)</script>"


def test_on_s3_the_operator_is_sent_to_a_short_lived_signed_url_that_is_not_cached(operator_client, s3_storages):
    key = put("packages", "dev-1/pkg-1/0a1b.package", b"package bytes")
    response = operator_client.get(file_url("packages", key))
    assert response.status_code == 302
    location = urllib.parse.urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}" == s3_storages.endpoint
    assert location.path == f"/{s3_storages.bucket}/packages/{key}"
    query = urllib.parse.parse_qs(location.query)
    assert "Signature" in query or "X-Amz-Signature" in query
    expires_in = int(query["Expires"][0]) - time.time() if "Expires" in query else int(query["X-Amz-Expires"][0])
    assert 0 < expires_in <= 300 + 5
    assert {"private", "no-store"} <= set(re.split(r",\s*", response["Cache-Control"]))
    assert http_get(f"{s3_storages.endpoint}{location.path}").status == 403, "the object itself is not public"


def test_on_s3_an_area_with_its_own_bucket_is_signed_for_that_bucket(operator_client, s3_storages):
    key = put("prediction_images", "dev-1/pred-1.png", image_bytes())
    got = download(operator_client, file_url("prediction_images", key))
    assert got.status == 200
    bucket, object_key = s3_storages.object_key("prediction_images", key)
    assert urllib.parse.urlsplit(got.redirected_to).path == f"/{bucket}/{object_key}"


def test_a_missing_file_is_not_found(operator_client, backend):
    assert operator_client.get(file_url("packages", "dev-1/nothing-here.package")).status_code == 404
    assert operator_client.get(file_url("prediction_images", "dev-1/none.png", thumb=1)).status_code == 404


def test_files_are_read_only(operator_client):
    key = put("packages", "dev-1/pkg.package", b"x")
    assert operator_client.post(file_url("packages", key)).status_code == 405
    assert operator_client.delete(file_url("packages", key)).status_code == 405


# --- Who may open what -------------------------------------------------------------------------


@pytest.mark.parametrize(("area", "permission", "key"), AREA_PERMISSIONS)
def test_each_area_opens_with_the_view_permission_of_its_records_only(
    client, django_user_model, backend, area, permission, key
):
    for other_area, _, other_key in AREA_PERMISSIONS:
        put(other_area, other_key, b"data")
    client.force_login(staff_with(django_user_model, permission))
    for other_area, _, other_key in AREA_PERMISSIONS:
        got = download(client, file_url(other_area, other_key))
        assert got.status == (200 if (other_area, other_key) == (area, key) else 403), (other_key, got.body)


def test_labelers_open_the_images_their_tasks_show_and_nothing_else(client, django_user_model, backend):
    for area, _, key in AREA_PERMISSIONS:
        put(area, key, b"data")
    client.force_login(staff_with(django_user_model, "labeling.label_tasks"))
    for area, _, key in AREA_PERMISSIONS:
        expected = 200 if area in ("prediction_images", "drift_images") else 403
        assert download(client, file_url(area, key)).status == expected, area


def test_drift_images_need_the_drift_permission_beside_the_fleet_ones(operator_client, operator, backend):
    key = put("drift_images", "dev-1/sample-1.jpg", image_bytes(format="JPEG"))
    assert operator_client.get(file_url("drift_images", key)).status_code == 403
    grant(operator, "drift.view_driftsample")
    got = download(operator_client, file_url("drift_images", key))
    assert got.status == 200 and got.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("area", ["default", "staticfiles", "secrets", "PACKAGES"])
def test_unknown_areas_are_not_found_even_for_a_superuser(client, django_user_model, area):
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    assert client.get(file_url(area, "dev-1/x.bin")).status_code == 404


def test_anonymous_browsers_are_sent_to_sign_in(client):
    key = put("packages", "dev-1/pkg.package", b"secret")
    response = client.get(file_url("packages", key), HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={urllib.parse.quote(file_url('packages', key))}"


def test_anonymous_scripts_and_image_tags_are_refused(client):
    key = put("prediction_images", "dev-1/pred.png", image_bytes())
    for accept in ["", "application/json", "image/avif,image/webp,*/*"]:
        response = client.get(file_url("prediction_images", key), HTTP_ACCEPT=accept)
        assert response.status_code == 403, accept
        assert image_bytes() not in response.content


def test_a_signed_in_outsider_is_refused(client, outsider):
    key = put("packages", "dev-1/pkg.package", b"secret")
    client.force_login(outsider)
    assert client.get(file_url("packages", key)).status_code == 403


def test_staff_without_the_area_permission_and_holders_who_are_not_staff_are_refused(client, django_user_model):
    key = put("packages", "dev-1/pkg.package", b"secret")
    for user in [
        staff_with(django_user_model, "devices.view_device", username="sam"),
        staff_with(django_user_model, "devices.view_package", username="nora", staff=False),
    ]:
        client.force_login(user)
        assert client.get(file_url("packages", key)).status_code == 403, user.username


def test_a_device_token_opens_no_file(client, device_a):
    key = put("packages", f"{device_a.device.pk}/pkg.package", b"its own package")
    response = client.get(file_url("packages", key), **device_a.auth)
    assert response.status_code == 403
    assert b"its own package" not in response.content


def test_refused_callers_on_s3_get_no_signed_url(client, outsider, device_a, s3_storages):
    key = put("packages", "dev-1/pkg.package", b"secret")
    anonymous = client.get(file_url("packages", key), HTTP_ACCEPT="text/html")
    assert anonymous["Location"].startswith("/admin/login/")
    assert client.get(file_url("packages", key), **device_a.auth).status_code == 403
    client.force_login(outsider)
    assert client.get(file_url("packages", key)).status_code == 403


# --- Keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "packages/../oplogs/dev-1/app.log",
        "packages/dev-1/../../oplogs/dev-1/app.log",
        "packages/../secret.txt",
        "packages/%2e%2e/secret.txt",
        "packages/..%2Fsecret.txt",
        "packages/..%5Csecret.txt",
        "packages/dev-1%5C..%5C..%5Csecret.txt",
        "packages//etc/passwd",
        "packages/./dev-1/pkg.package",
        "packages/dev-1//pkg.package",
        "packages/dev-1/pkg.package%00.png",
        "packages/dev-1/",
    ],
)
def test_keys_that_could_leave_the_area_are_not_found(operator_client, settings, backend, path):
    put("oplogs", "dev-1/app.log", b"another area")
    put("packages", "dev-1/pkg.package", b"package")
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    (settings.MEDIA_ROOT / "secret.txt").write_bytes(b"outside every area")
    response = operator_client.get(f"/files/{path}")
    assert response.status_code == 404, (path, response.status_code)


def test_a_safe_key_is_a_relative_path_of_plain_segments():
    for key in ["pkg.package", "dev-1/pkg-1/0a1b.package", "a/b/c d.png", "ünïcode/ok.log"]:
        assert is_safe_key(key), key
    for key in [
        "",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "/abs",
        "a//b",
        "./a",
        "a/./b",
        "a\\b",
        "a/b/",
        "a\x00b",
        "x" * 1025,
    ]:
        assert not is_safe_key(key), key


# --- Thumbnails ----------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_a_thumbnail_is_a_png_of_at_most_128_pixels_that_keeps_the_aspect_ratio(operator_client, backend, format):
    suffix = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[format]
    key = put("prediction_images", f"dev-1/pred-1.{suffix}", image_bytes((640, 480), format))
    response = operator_client.get(file_url("prediction_images", key, thumb=1))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'inline; filename="pred-1.thumb.png"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "private" in response["Cache-Control"]
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.format == "PNG"
        assert thumbnail.size == (128, 96)


def test_a_small_image_is_not_enlarged(operator_client):
    key = put("prediction_images", "dev-1/tiny.png", image_bytes((28, 28)))
    response = operator_client.get(file_url("prediction_images", key, thumb=1))
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.size == (28, 28)


def test_no_thumbnail_of_an_image_over_the_pixel_limit(operator_client, settings, backend):
    settings.PACKAGE_MAX_IMAGE_PIXELS = 640 * 480 - 1
    key = put("prediction_images", "dev-1/big.png", image_bytes((640, 480)))
    assert operator_client.get(file_url("prediction_images", key, thumb=1)).status_code == 404


def test_only_readable_images_have_thumbnails(operator_client):
    package = put("packages", "dev-1/pkg.package", b"\x1f\x8b")
    broken = put("prediction_images", "dev-1/broken.png", b"\x89PNG\r\n\x1a\n not really")
    svg = put("prediction_images", "dev-1/vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    for area, key in [("packages", package), ("prediction_images", broken), ("prediction_images", svg)]:
        assert operator_client.get(file_url(area, key, thumb=1)).status_code == 404, key


def test_an_svg_is_a_download_not_a_page(operator_client):
    key = put("prediction_images", "dev-1/vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    response = operator_client.get(file_url("prediction_images", key))
    assert response["Content-Disposition"].startswith("attachment;")
    assert response.getvalue().startswith(b"<svg")


# --- Configuration -----------------------------------------------------------------------------


def test_an_s3_area_without_signed_urls_is_a_configuration_error(operator_client, s3_storages, settings):
    packages = settings.STORAGES["packages"]
    settings.STORAGES = {
        **settings.STORAGES,
        "packages": {**packages, "OPTIONS": {**packages["OPTIONS"], "querystring_auth": False}},
    }
    key = put("packages", "dev-1/pkg.package", b"x")
    with pytest.raises(ImproperlyConfigured, match="unsigned URLs"):
        operator_client.get(file_url("packages", key))
