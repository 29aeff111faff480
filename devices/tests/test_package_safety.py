"""Bad archives: each is refused with its own clear reason, and nothing lands outside storage.

Archives go through the endpoint (201, then the worker fails them: docs/device-protocol.md
says the archive is checked after the upload) using the metrics kind; images need an
image-bearing kind, so the image checks call the reader directly.
"""

import gzip
import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from django.core.files.storage import storages

from devices.ingest import archive as reader
from devices.ingest import kinds
from devices.ingest.archive import ArchiveError, Limits, open_image, read_package
from devices.models import Package, PackageStatus, PredictionImage, Telemetry
from devices.tests.packages import (
    Archive,
    build,
    gzipped_zeros,
    manifest_for,
    manifest_member,
    metrics_lines,
    metrics_package,
    pax_blocks,
    pax_header_bomb,
    png,
    raw,
    raw_tar,
    regular,
    special,
    stored_objects,
    tar_blocks,
    upload,
    zeros_bomb,
)

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
LINES = metrics_lines({"id": str(uuid.uuid4()), "cpu_percent": 1.0})


@pytest.fixture
def new_files_outside_storage(tmp_path):
    """Files and links created under tmp_path since the test started, except the packages
    storage, where the uploaded archive itself belongs."""
    before = set(tmp_path.rglob("*"))
    packages = tmp_path / "media" / "packages"

    def new():
        return sorted(
            path
            for path in tmp_path.rglob("*")
            if (path.is_file() or path.is_symlink()) and path not in before and packages not in path.parents
        )

    return new


@pytest.fixture
def refused(api, device_a, django_capture_on_commit_callbacks, new_files_outside_storage):
    """Upload ``archive`` (accepted: the archive is checked by the worker), run its processing,
    and check it failed for ``reason`` with nothing stored but the archive itself."""

    def check(archive: Archive, reason: str, persona=device_a, **headers) -> Package:
        with django_capture_on_commit_callbacks(execute=True):
            response = upload(api, persona, archive, **headers)
        assert response.status_code == 201, response.content
        package = Package.objects.get(device=persona.device, package_id=response.json()["id"])
        assert package.status == PackageStatus.FAILED, (package.status, package.summary)
        assert reason in package.error, package.error
        assert not Telemetry.objects.exists()
        assert new_files_outside_storage() == []
        assert stored_objects() == [Path(storages["packages"].location) / package.storage_key]
        return package

    return check


@pytest.fixture
def expanded(monkeypatch):
    """How many decompressed bytes the reader pulled out of the gzip stream."""
    readers = []

    class Recording(reader._CappedReader):
        def __init__(self, *args):
            super().__init__(*args)
            readers.append(self)

    monkeypatch.setattr(reader, "_CappedReader", Recording)
    return lambda: sum(each.seen for each in readers)


def places_named_by(name: str, package: Package, tmp_path: Path) -> set[Path]:
    """Where extracting ``name`` naively could have written it: relative to the worker's
    folder, the test's, the storage's or the package's own folder in it."""
    storage = Path(storages["packages"].location)
    bases = [Path.cwd(), tmp_path, storage, (storage / package.storage_key).parent]
    return {(base / name).resolve() for base in bases}


# --- Paths and member types -------------------------------------------------------------------


@pytest.mark.parametrize("template", ["../evil-{}.txt", "../../evil-{}.txt", "samples/../../evil-{}.txt"])
def test_it_rejects_a_package_with_a_path_outside_the_archive(device_a, refused, tmp_path, template):
    name = template.format(uuid.uuid4().hex)
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES), (name, b"pwned")])
    package = refused(archive, "points outside the archive")
    assert not any(place.exists() for place in places_named_by(name, package, tmp_path))


def test_it_rejects_a_member_with_an_absolute_path(device_a, refused):
    target = Path("/tmp") / uuid.uuid4().hex / "evil"
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES), (str(target), b"pwned")])
    refused(archive, "absolute path")
    assert not target.parent.exists()


def test_it_rejects_a_windows_drive_path_as_absolute(device_a, refused):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES), ("C:evil.txt", b"pwned")])
    refused(archive, "absolute path")


def test_it_rejects_a_symbolic_link_member(device_a, refused):
    archive = build(device_a.device, "metrics", [], extra=[special("metrics.jsonl", tarfile.SYMTYPE, "/etc/passwd")])
    package = refused(archive, "symbolic link")
    assert "/etc/passwd" in package.error


def test_it_rejects_a_hard_link_member(device_a, refused):
    archive = build(device_a.device, "metrics", [], extra=[special("metrics.jsonl", tarfile.LNKTYPE, "/etc/passwd")])
    refused(archive, "hard link")


@pytest.mark.parametrize(
    "type, what",
    [
        (tarfile.CHRTYPE, "device file"),
        (tarfile.BLKTYPE, "device file"),
        (tarfile.FIFOTYPE, "FIFO"),
        (tarfile.DIRTYPE, "directory"),
    ],
)
def test_it_rejects_devices_fifos_and_directories(device_a, refused, type, what):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], extra=[special("samples", type)])
    refused(archive, f"is a {what}: only regular files are allowed")


def test_it_rejects_a_sparse_member_whose_holes_would_expand(device_a, refused):
    # GNU sparse 0.1 in pax: 5 bytes stored, 5000 once the holes are filled in.
    document = manifest_for(device_a.device, "metrics", [("metrics.jsonl", b"12345" + bytes(4995))])
    sparse = {b"GNU.sparse.map": b"0,5", b"GNU.sparse.size": b"5000", b"GNU.sparse.numblocks": b"1"}
    tar = tar_blocks(*manifest_member(document)) + pax_blocks(sparse) + tar_blocks(*regular("metrics.jsonl", b"12345"))
    refused(raw_tar(document["id"], "metrics", tar), "sparse file")


@pytest.mark.parametrize(
    "records, reason",
    [
        ({b"hdrcharset": b"\xff\xfe"}, "utf-8"),  # tarfile raised UnicodeDecodeError: the task crashed
        ({b"GNU.sparse.map": b"a,b", b"GNU.sparse.size": b"5"}, "invalid literal"),  # and ValueError
    ],
)
def test_it_rejects_malformed_pax_headers_as_an_invalid_tar_instead_of_crashing(device_a, refused, records, reason):
    document = manifest_for(device_a.device, "metrics", [])
    tar = pax_blocks(records) + tar_blocks(*manifest_member(document))
    package = refused(raw_tar(document["id"], "metrics", tar), "Not a valid tar archive")
    assert reason in package.error


# --- Bombs ------------------------------------------------------------------------------------


def test_it_rejects_a_decompression_bomb_before_expanding_it(device_a, refused, expanded):
    bomb = zeros_bomb(device_a.device, 200 * MB)
    assert len(bomb.body) < 300 * 1024
    refused(bomb, f"'metrics.jsonl' is {200 * MB} bytes, over the limit of")
    assert expanded() < MB, "the reader stopped at the member's header"


def test_it_stops_a_bomb_of_members_each_under_the_limit_once_their_total_expands_past_it(
    device_a, refused, expanded, settings
):
    settings.PACKAGE_MAX_TOTAL_BYTES = 16 * MB
    bomb = zeros_bomb(device_a.device, 8 * MB, count=25)  # 200 MB in all
    refused(bomb, f"The archive expands past {16 * MB} bytes")
    assert expanded() < 17 * MB


def test_it_stops_a_gzip_that_expands_past_the_cap_in_a_single_pax_header(device_a, refused, expanded, settings):
    settings.PACKAGE_MAX_TOTAL_BYTES, settings.PACKAGE_MAX_MEMBERS = MB, 10
    cap = Limits.from_settings().max_stream_bytes
    refused(pax_header_bomb(device_a.device, 200 * MB), f"The archive expands past {cap} bytes")
    assert expanded() < cap + MB


def test_it_stops_zeros_after_the_end_of_the_tar_at_the_cap(device_a, settings, expanded):
    settings.PACKAGE_MAX_TOTAL_BYTES, settings.PACKAGE_MAX_MEMBERS = MB, 10
    archive = metrics_package(device_a.device)
    body = archive.body + gzipped_zeros(8 * MB)
    with pytest.raises(ArchiveError, match="expands past"):
        read_package(io.BytesIO(body))
    assert expanded() < 2 * MB


def test_it_rejects_a_pixel_bomb_png_before_decoding_it():
    bomb = png(30000, 30000)
    assert len(bomb) < 100
    with pytest.raises(ArchiveError, match="over the pixel limit"):
        open_image(bomb, "samples/s1/image.png", 16_000_000)


def test_it_rejects_a_pixel_bomb_png_uploaded_in_a_prediction_images_package(device_a, refused):
    if "prediction_images" not in kinds.registered_kinds():
        pytest.skip("no prediction_images handler installed")
    prediction_id = str(uuid.uuid4())
    path = f"images/{prediction_id}.png"
    archive = build(device_a.device, "prediction_images", [(path, png(30000, 30000))], records=[prediction_id])
    package = refused(archive, "over the pixel limit")
    assert path in package.error
    assert not PredictionImage.objects.exists()


def test_it_rejects_an_image_over_the_configured_pixel_limit_through_the_package(device_a, settings):
    settings.PACKAGE_MAX_IMAGE_PIXELS = 1_000_000
    path = "samples/51b0/image.png"
    contents = read_package(io.BytesIO(build(device_a.device, "quarantine", [(path, png(2000, 1000))]).body))
    with pytest.raises(ArchiveError, match="2000×1000 pixels, over the limit of 1000000"):
        contents.image(path)


def test_an_image_within_the_pixel_limit_is_read_with_its_size(device_a):
    path = "samples/51b0/image.png"
    contents = read_package(io.BytesIO(build(device_a.device, "quarantine", [(path, png(1, 1))]).body))
    image = contents.image(path)
    assert (image.format, image.width, image.height, image.content_type) == ("PNG", 1, 1, "image/png")


def test_it_rejects_a_png_that_claims_more_pixels_than_it_holds():
    with pytest.raises(ArchiveError, match="cannot be read"):
        open_image(png(300, 300), "samples/s1/image.png", 16_000_000)


# --- Against the manifest ---------------------------------------------------------------------


def listed(data: bytes = LINES, **changes) -> dict:
    entry = manifest_for(None, "metrics", [("metrics.jsonl", data)])["files"][0]
    return {**entry, **changes}


def test_it_rejects_a_member_whose_sha256_does_not_match_the_manifest(device_a, refused):
    manifest = {"files": [listed(sha256="0" * 64)]}
    refused(build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest=manifest), "sha256")


def test_it_rejects_a_member_whose_size_does_not_match_the_manifest(device_a, refused):
    manifest = {"files": [listed(size=len(LINES) + 1)]}
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest=manifest)
    refused(archive, f"is {len(LINES)} bytes; the manifest says {len(LINES) + 1}")


def test_it_rejects_a_member_the_manifest_does_not_list(device_a, refused):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], extra=[regular("notes.txt", b"hi")])
    refused(archive, "'notes.txt' is not listed in the manifest")


def test_it_rejects_a_listed_file_that_is_missing(device_a, refused):
    manifest = {"files": [listed(), listed(path="more.jsonl")]}
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest=manifest)
    refused(archive, "lists 'more.jsonl' but the archive has no such member")


def test_it_rejects_a_manifest_that_lists_a_file_twice(device_a, refused):
    manifest = {"files": [listed(), listed()]}
    refused(build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest=manifest), "lists a file twice")


def test_it_rejects_a_member_that_appears_twice(device_a, refused):
    duplicate = regular("metrics.jsonl", LINES)
    refused(build(device_a.device, "metrics", [("metrics.jsonl", LINES)], extra=[duplicate]), "appears twice")


def test_it_rejects_a_manifest_that_lies_about_its_kind(device_a, refused):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest={"kind": "drift_event"})
    refused(archive, "The manifest says kind 'drift_event', but the package was uploaded as 'metrics'")


def test_it_rejects_a_manifest_whose_id_is_not_the_uploaded_one(device_a, refused):
    archive = metrics_package(device_a.device)
    other = str(uuid.uuid4())
    refused(
        archive, f"The manifest id {archive.package_id} is not the uploaded package id {other}", HTTP_X_PACKAGE_ID=other
    )


def test_it_rejects_a_manifest_naming_another_device(device_a, device_b, refused):
    archive = metrics_package(device_a.device)
    package = refused(archive, f"The manifest names device {device_a.device.pk}, not the uploading device", device_b)
    assert package.device == device_b.device
    assert not Package.objects.filter(device=device_a.device).exists()


def test_it_rejects_a_package_whose_manifest_is_not_first(device_a, refused):
    document = manifest_for(device_a.device, "metrics", [("metrics.jsonl", LINES)])
    archive = raw(document["id"], "metrics", [regular("metrics.jsonl", LINES), manifest_member(document)])
    refused(archive, "The first member must be manifest.json, not 'metrics.jsonl'")


def test_it_rejects_a_manifest_that_is_not_json(device_a, refused):
    package_id = str(uuid.uuid4())
    refused(raw(package_id, "metrics", [regular("manifest.json", b"{not json")]), "manifest.json is not valid JSON")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"format": 2}, "manifest.json at format: 1 was expected"),
        ({"files": "metrics.jsonl"}, "manifest.json at files: 'metrics.jsonl' is not of type 'array'"),
        ({"id": "not-a-uuid"}, "manifest.json at id: 'not-a-uuid' is not a 'uuid'"),
        ({"records": None}, "manifest.json at records: None is not of type 'array'"),
    ],
)
def test_it_rejects_a_manifest_that_fails_the_schema_naming_the_field(device_a, refused, changes, reason):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES)], manifest=changes)
    refused(archive, reason, HTTP_X_PACKAGE_ID=str(uuid.uuid4()))  # the header must stay a UUID


def test_it_rejects_a_manifest_missing_a_required_key(device_a, refused):
    document = manifest_for(device_a.device, "metrics", [])
    del document["files"]
    refused(raw(document["id"], "metrics", [manifest_member(document)]), "'files' is a required property")


# --- Limits -----------------------------------------------------------------------------------


def test_it_rejects_an_archive_with_too_many_members(device_a, refused, settings):
    settings.PACKAGE_MAX_MEMBERS = 3
    extra = [regular(f"extra-{number}.txt", b"x") for number in range(3)]
    refused(build(device_a.device, "metrics", [("metrics.jsonl", LINES)], extra=extra), "more than 3 members")


def test_it_rejects_a_member_over_the_per_member_limit(device_a, refused, settings):
    settings.PACKAGE_MAX_MEMBER_BYTES = 1024
    big = metrics_lines(*[{"id": str(uuid.uuid4()), "cpu_percent": 1.0} for _ in range(30)])
    archive = build(device_a.device, "metrics", [("metrics.jsonl", big)])
    refused(archive, f"'metrics.jsonl' is {len(big)} bytes, over the limit of 1024")


def test_an_archive_over_the_upload_limit_is_refused_with_413_and_nothing_is_stored(api, device_a, settings):
    settings.PACKAGE_MAX_BYTES = 64 * 1024
    archive = build(device_a.device, "metrics", [("metrics.jsonl", LINES), ("noise.bin", os.urandom(80 * 1024))])
    response = upload(api, device_a, archive)
    assert response.status_code == 413, response.content
    assert "65536 bytes" in response.json()["detail"]
    assert stored_objects() == []
    assert not Package.objects.exists()


def test_it_rejects_an_empty_archive(device_a, refused):
    refused(raw(uuid.uuid4(), "metrics", []), "The archive is empty")


def test_it_rejects_an_empty_gzip(device_a, refused):
    refused(Archive(str(uuid.uuid4()), "metrics", gzip.compress(b"", mtime=0)), "empty")


# --- Not a tar.gz -----------------------------------------------------------------------------


def test_it_rejects_a_truncated_gzip(device_a, refused):
    body = metrics_package(device_a.device, beats=50).body
    refused(Archive(str(uuid.uuid4()), "metrics", body[: len(body) // 2]), "The archive is truncated")


def test_it_rejects_a_gzip_cut_off_in_its_trailer_after_the_last_member(device_a, refused):
    # tarfile stops at the end-of-archive blocks; the reader still reads the gzip to its end.
    archive = metrics_package(device_a.device)
    refused(Archive(archive.package_id, "metrics", archive.body[:-4]), "The archive is truncated")


def test_it_rejects_a_gzip_whose_checksum_is_wrong(device_a, refused):
    archive = metrics_package(device_a.device)
    body = bytearray(archive.body)
    body[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    refused(Archive(archive.package_id, "metrics", bytes(body)), "CRC check failed")


def test_every_cut_short_copy_of_a_package_is_refused_as_truncated(device_a):
    body = metrics_package(device_a.device).body
    for size in range(2, len(body)):  # from 2 bytes on, the gzip magic number is whole
        with pytest.raises(ArchiveError, match="truncated"):
            read_package(io.BytesIO(body[:size]))


def test_it_rejects_garbage_that_is_not_gzip(device_a, refused):
    refused(Archive(str(uuid.uuid4()), "metrics", b"PK" + os.urandom(2048)), "Not a valid gzip stream")


def test_it_rejects_a_gzip_of_something_that_is_not_a_tar(device_a, refused):
    body = gzip.compress(b"just some text, not a tar archive\n" * 100, mtime=0)
    refused(Archive(str(uuid.uuid4()), "metrics", body), "Not a valid tar archive")
