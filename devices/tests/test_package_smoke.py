import uuid

import pytest

from devices.models import Package, PackageStatus, Telemetry
from devices.tests.packages import build, metrics_lines, upload


def test_a_metrics_package_is_stored_then_processed_into_telemetry(api, device_a, django_capture_on_commit_callbacks):
    beats = [{"id": str(uuid.uuid4()), "cpu_percent": 12.5, "sent_at": "2026-11-23T11:00:00Z"} for _ in range(3)]
    archive = build(
        device_a.device, "metrics", [("metrics.jsonl", metrics_lines(*beats))], records=[b["id"] for b in beats]
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, device_a, archive)
    assert response.status_code == 201, response.content
    package = Package.objects.get()
    assert package.status == PackageStatus.PROCESSED, package.error
    assert Telemetry.objects.filter(device=device_a.device).count() == 3
    assert package.summary == {"heartbeats": 3, "stored": 3}
    replay = upload(api, device_a, archive)
    assert replay.status_code == 200 and replay.json()["status"] == "processed"
    assert Package.objects.count() == 1


def test_rfc3339_times_with_a_lowercase_t_and_z_are_accepted(api, device_a, django_capture_on_commit_callbacks):
    beat = {"id": str(uuid.uuid4()), "sent_at": "2026-11-23t11:00:00z"}
    archive = build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines(beat))], records=[beat["id"]])
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, archive)
    assert Package.objects.get().status == PackageStatus.PROCESSED
    assert Telemetry.objects.get().sent_at.isoformat() == "2026-11-23T11:00:00+00:00"


def test_the_date_time_format_is_enforced_by_the_schema_validator():
    from devices.ingest.archive import ArchiveError, validate

    with pytest.raises(ArchiveError, match="is not a 'date-time'"):
        validate("yesterday", {"type": "string", "format": "date-time"}, "x.json")


def test_an_unforeseen_error_fails_the_package_with_its_reason_instead_of_leaving_it_stuck(
    api, device_a, django_capture_on_commit_callbacks, monkeypatch
):
    from devices.ingest.kinds import metrics

    def broken(package, contents):
        raise KeyError("something no check foresaw")

    monkeypatch.setattr(metrics, "handle", broken)
    archive = build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines())])
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, archive)
    package = Package.objects.get()
    assert package.status == PackageStatus.FAILED
    assert package.error == "Internal error while processing: KeyError: 'something no check foresaw'"


def test_a_manifest_may_spell_its_uuids_in_capitals(api, device_a, django_capture_on_commit_callbacks):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines())])
    archive = build(
        device_a.device,
        "metrics",
        [("metrics.jsonl", metrics_lines())],
        manifest={"id": archive.package_id.upper(), "device": str(device_a.device.pk).upper()},
    )
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, archive, HTTP_X_PACKAGE_ID=archive.package_id.lower())
    assert Package.objects.get().status == PackageStatus.PROCESSED, Package.objects.get().error


def test_a_heartbeat_holding_a_nul_character_fails_the_package_naming_the_line(
    api, device_a, django_capture_on_commit_callbacks
):
    beat = {"id": str(uuid.uuid4()), "client_version": "0.1\u0000"}
    archive = build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines(beat))], records=[beat["id"]])
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, archive)
    package = Package.objects.get()
    assert package.status == PackageStatus.FAILED
    assert package.error == "metrics.jsonl line 1 holds a NUL character, which cannot be stored."
    assert not Telemetry.objects.exists()
