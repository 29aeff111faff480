"""Admin for the ingest tables: the same cost on any table size, read-only, packages reprocessed
through the service, stored files opened through the stored-file view."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conftest import make_device
from devices.admin import PackageAdmin
from devices.models import (
    ConfidenceBand,
    OperationalLog,
    Package,
    PackageStatus,
    PredictionImage,
    PredictionLog,
    StateSnapshot,
)
from devices.tests.packages import build, metrics_lines, upload

pytestmark = pytest.mark.django_db

BIG_TABLES = ["package", "predictionlog", "predictionimage", "operationallog", "statesnapshot"]


@pytest.fixture
def admin_client_for(client, operator):
    client.force_login(operator)
    return client


def changelist(model_name: str) -> str:
    return reverse(f"admin:devices_{model_name}_changelist")


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def add_prediction(device, *, confidence=0.5, model_version="digits@1", label="7", minutes_ago=0) -> PredictionLog:
    return PredictionLog.objects.create(
        device=device,
        client_id=uuid.uuid4(),
        created=timezone.now() - timedelta(minutes=minutes_ago),
        model_version=model_version,
        label=label,
        confidence=confidence,
        probabilities={label: confidence, "1": round(1 - confidence, 3)},
        latency_ms=8.5,
        features=np.arange(16, dtype="<f4").tobytes(),
    )


def add_package(device, *, status=PackageStatus.PROCESSED, error="", kind="metrics") -> Package:
    now = timezone.now()
    package_id = uuid.uuid4()
    return Package.objects.create(
        device=device,
        package_id=package_id,
        kind=kind,
        sha256="0" * 64,
        size=2048,
        storage_key=f"{device.pk}/{package_id}/archive.package",
        status=status,
        error=error,
        attempts=1,
        processing_started_at=now - timedelta(milliseconds=250),
        processed_at=now,
        summary={"heartbeats": 3, "stored": 3},
    )


def add_image(device, prediction: PredictionLog | None = None) -> PredictionImage:
    prediction_id = prediction.client_id if prediction else uuid.uuid4()
    return PredictionImage.objects.create(
        device=device,
        prediction_id=prediction_id,
        storage_key=f"{device.pk}/{prediction_id}.png",
        content_type="image/png",
        width=28,
        height=28,
        size=812,
    )


def add_oplog(device) -> OperationalLog:
    client_id = uuid.uuid4()
    return OperationalLog.objects.create(
        device=device,
        client_id=client_id,
        created=timezone.now(),
        name="edge.log",
        storage_key=f"{device.pk}/{client_id}.log",
        size=4096,
        lines=80,
    )


def add_snapshot(device) -> StateSnapshot:
    return StateSnapshot.objects.create(
        device=device, client_id=uuid.uuid4(), created=timezone.now(), state={"detectors": {"adwin": {"n": 3}}}
    )


def add_prediction_with_image(device) -> None:
    add_image(device, add_prediction(device))


ROWS = {
    "package": add_package,
    "predictionlog": add_prediction_with_image,
    "predictionimage": add_image,
    "operationallog": add_oplog,
    "statesnapshot": add_snapshot,
}


# --- Access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", [*BIG_TABLES, "confidenceband"])
def test_the_ingest_changelists_open_for_the_operator(admin_client_for, device_a, model_name):
    if model_name in ROWS:
        ROWS[model_name](device_a.device)
    response = admin_client_for.get(changelist(model_name))
    assert response.status_code == 200, response.content[:2000]


@pytest.mark.parametrize("model_name", [*BIG_TABLES, "confidenceband"])
def test_an_outsider_is_sent_to_sign_in(client, outsider, model_name):
    client.force_login(outsider)
    response = client.get(changelist(model_name))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize("model_name", BIG_TABLES)
def test_ingest_rows_cannot_be_added_or_edited_in_the_admin(admin_client_for, device_a, model_name):
    ROWS[model_name](device_a.device)
    row = Package.objects.first() if model_name == "package" else None
    assert admin_client_for.get(reverse(f"admin:devices_{model_name}_add")).status_code == 403
    if row is not None:
        change = reverse("admin:devices_package_change", args=[row.pk])
        assert admin_client_for.post(change, {"status": "processed", "error": ""}).status_code == 403
        row.refresh_from_db()
        assert row.status == PackageStatus.PROCESSED


def test_only_a_superuser_may_delete_predictions(admin_client_for, client, device_a, django_user_model):
    prediction = add_prediction(device_a.device)
    delete = reverse("admin:devices_predictionlog_delete", args=[prediction.pk])
    assert admin_client_for.get(delete).status_code == 403
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123"))
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not PredictionLog.objects.exists()


# --- Cost -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", BIG_TABLES)
def test_each_changelist_costs_the_same_for_3_or_30_rows(admin_client_for, device_a, device_b, model_name):
    assert_same_cost_for_3_or_30_rows(admin_client_for, changelist(model_name), ROWS[model_name], device_a, device_b)


def assert_same_cost_for_3_or_30_rows(client, url, add_row, first, then):
    """3 rows of ``first``'s, then 27 more of ``then``'s: the page costs the same queries."""
    for _ in range(3):
        add_row(first.device)
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    for _ in range(27):
        add_row(then.device)
    with CaptureQueriesContext(connection) as large:
        response = client.get(url)
    assert len(response.context["cl"].result_list) == 30
    assert len(small) == len(large), [q["sql"] for q in large.captured_queries]


@pytest.mark.parametrize("model_name", BIG_TABLES)
def test_a_changelist_filtered_to_a_device_costs_the_same_for_3_or_30_rows(admin_client_for, device_a, model_name):
    url = f"{changelist(model_name)}?device={device_a.device.pk}"
    assert_same_cost_for_3_or_30_rows(admin_client_for, url, ROWS[model_name], device_a, device_a)


# Session, user, the user's and the group's permissions, the capped count, the page; the
# prediction list also asks for its model versions (a loose index scan) and recent labels.
PINNED_QUERIES = {"package": 6, "predictionlog": 8, "predictionimage": 6, "operationallog": 6, "statesnapshot": 6}


@pytest.mark.parametrize("model_name", BIG_TABLES)
def test_each_changelist_runs_a_pinned_number_of_queries(admin_client_for, device_a, model_name):
    for _ in range(5):
        ROWS[model_name](device_a.device)
    with CaptureQueriesContext(connection) as queries:
        admin_client_for.get(changelist(model_name))
    assert len(queries) == PINNED_QUERIES[model_name], [q["sql"] for q in queries.captured_queries]


@pytest.mark.parametrize("model_name", BIG_TABLES)
def test_no_changelist_counts_the_whole_table(admin_client_for, device_a, model_name):
    ROWS[model_name](device_a.device)
    with CaptureQueriesContext(connection) as queries:
        admin_client_for.get(changelist(model_name))
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_the_prediction_changelist_loads_no_feature_vectors(admin_client_for, device_a):
    add_prediction(device_a.device)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_for.get(changelist("predictionlog"))
    page = next(
        q["sql"] for q in queries.captured_queries if "devices_predictionlog" in q["sql"] and "LENGTH" in q["sql"]
    )
    assert '"devices_predictionlog"."features",' not in page and '"devices_predictionlog"."features" ' not in page
    assert b'<td class="field-feature_values">16</td>' in response.content


# --- Packages ---------------------------------------------------------------------------------


def stored_metrics_package(api, device, callbacks) -> Package:
    beats = [{"id": str(uuid.uuid4()), "cpu_percent": 12.5, "sent_at": "2026-11-23T11:00:00Z"} for _ in range(3)]
    archive = build(
        device.device, "metrics", [("metrics.jsonl", metrics_lines(*beats))], records=[b["id"] for b in beats]
    )
    with callbacks(execute=True):
        assert upload(api, device, archive).status_code == 201
    package = Package.objects.get()
    assert package.status == PackageStatus.PROCESSED, package.error
    return package


def fail(package: Package, error: str) -> None:
    Package.objects.filter(pk=package.pk).update(status=PackageStatus.FAILED, error=error)


def reprocess(client, *packages):
    return client.post(
        changelist("package"), {"action": "reprocess", "_selected_action": [package.pk for package in packages]}
    )


def test_reprocessing_a_failed_package_requeues_it_and_reports_the_count(
    admin_client_for, api, device_a, django_capture_on_commit_callbacks
):
    package = stored_metrics_package(api, device_a, django_capture_on_commit_callbacks)
    fail(package, "Gave up after 9 attempts: OSError: storage unreachable")
    with django_capture_on_commit_callbacks() as callbacks:
        response = reprocess(admin_client_for, package)
    assert response.status_code == 302
    package.refresh_from_db()
    assert (package.status, package.error) == (PackageStatus.RECEIVED, "")
    assert len(callbacks) == 1  # process_package.delay_on_commit(pk)
    assert messages_of(response) == ["Queued 1 package(s) for processing again."]


def test_a_reprocessed_package_is_processed_again(admin_client_for, api, device_a, django_capture_on_commit_callbacks):
    package = stored_metrics_package(api, device_a, django_capture_on_commit_callbacks)
    fail(package, "Gave up after 9 attempts: OSError: storage unreachable")
    with django_capture_on_commit_callbacks(execute=True):
        reprocess(admin_client_for, package)
    package.refresh_from_db()
    assert package.status == PackageStatus.PROCESSED, package.error
    assert package.attempts == 2 and package.error == ""
    assert package.summary == {"heartbeats": 3, "stored": 0}  # its heartbeats were stored the first time


def test_reprocess_skips_packages_still_in_flight_and_says_so(
    admin_client_for, device_a, django_capture_on_commit_callbacks
):
    failed = add_package(device_a.device, status=PackageStatus.FAILED, error="boom")
    waiting = add_package(device_a.device, status=PackageStatus.RECEIVED)
    with django_capture_on_commit_callbacks() as callbacks:
        response = reprocess(admin_client_for, failed, waiting)
    assert len(callbacks) == 1
    assert messages_of(response) == [
        "Queued 1 package(s) for processing again.",
        "Skipped 1 package(s) still received or processing.",
    ]


def test_the_reprocess_action_needs_the_change_permission(client, device_a, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("vera", password="pw-vera-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_package"))
    client.force_login(viewer)
    package = add_package(device_a.device, status=PackageStatus.FAILED, error="boom")
    response = client.get(changelist("package"))
    assert response.status_code == 200 and b'value="reprocess"' not in response.content
    reprocess(client, package)
    package.refresh_from_db()
    assert package.status == PackageStatus.FAILED


def test_the_failed_package_page_shows_its_whole_error_and_a_download_link(admin_client_for, device_a):
    error = "Member 'metrics.jsonl' does not match its sha256 in the manifest. " + "x" * 300
    package = add_package(device_a.device, status=PackageStatus.FAILED, error=error)
    response = admin_client_for.get(reverse("admin:devices_package_change", args=[package.pk]))
    assert response.status_code == 200
    assert f"<pre>{error}</pre>".replace("'", "&#x27;").encode() in response.content
    archive_url = reverse("stored-file", args=["packages", package.storage_key])
    assert f'href="{archive_url}"'.encode() in response.content
    assert b"&quot;heartbeats&quot;: 3" in response.content  # the summary
    listing = admin_client_for.get(changelist("package")).content
    assert error[:60].replace("'", "&#x27;").encode() in listing and error.encode() not in listing


def test_the_package_list_shows_size_and_processing_time(admin_client_for, device_a):
    add_package(device_a.device)
    response = admin_client_for.get(changelist("package"))
    assert b"2.0\xc2\xa0KB" in response.content
    assert b'<td class="field-processing_time">250</td>' in response.content


def test_packages_sort_by_processing_time(admin_client_for, device_a):
    quick, slow = add_package(device_a.device), add_package(device_a.device)
    Package.objects.filter(pk=slow.pk).update(processing_started_at=slow.processed_at - timedelta(seconds=3))
    column = PackageAdmin.list_display.index("processing_time") + 1  # after the action checkbox
    response = admin_client_for.get(changelist("package"), {"o": f"-{column}"})
    assert list(response.context["cl"].result_list) == [slow, quick]


def test_packages_are_found_by_exact_package_id_or_device_name(admin_client_for, device_a, device_b):
    mine, theirs = add_package(device_a.device), add_package(device_b.device)
    by_id = admin_client_for.get(changelist("package"), {"q": str(mine.package_id)})
    assert list(by_id.context["cl"].result_list) == [mine]
    by_name = admin_client_for.get(changelist("package"), {"q": "ice-b"})
    assert list(by_name.context["cl"].result_list) == [theirs]


def test_the_package_filters_narrow_by_status(admin_client_for, device_a):
    failed = add_package(device_a.device, status=PackageStatus.FAILED, error="boom")
    add_package(device_a.device)
    response = admin_client_for.get(changelist("package"), {"status__exact": "failed"})
    assert list(response.context["cl"].result_list) == [failed]


# --- Predictions ------------------------------------------------------------------------------


def band_rows(admin_client_for, band: str) -> set:
    response = admin_client_for.get(changelist("predictionlog"), {"band": band})
    assert response.status_code == 200
    return {(row.model_version, row.confidence) for row in response.context["cl"].result_list}


def test_the_confidence_band_filter_uses_the_default_band(admin_client_for, device_a, settings):
    settings.UNCERTAIN_BAND = (0.4, 0.7)
    for confidence in (0.1, 0.4, 0.55, 0.7, 0.9):
        add_prediction(device_a.device, confidence=confidence)
    assert band_rows(admin_client_for, "uncertain") == {("digits@1", 0.4), ("digits@1", 0.55), ("digits@1", 0.7)}
    assert band_rows(admin_client_for, "confident") == {("digits@1", 0.9)}
    assert band_rows(admin_client_for, "low") == {("digits@1", 0.1)}


def test_the_confidence_band_filter_uses_a_models_own_band(admin_client_for, device_a, settings):
    settings.UNCERTAIN_BAND = (0.4, 0.7)
    ConfidenceBand.objects.create(model_name="cats", low=0.1, high=0.3)
    for version in ("cats@2", "cats", "catsup@1", "digits@1"):
        for confidence in (0.05, 0.2, 0.5, 0.8):
            add_prediction(device_a.device, model_version=version, confidence=confidence)
    uncertain = band_rows(admin_client_for, "uncertain")
    assert uncertain == {("cats@2", 0.2), ("cats", 0.2), ("catsup@1", 0.5), ("digits@1", 0.5)}
    confident = band_rows(admin_client_for, "confident")
    assert confident == {
        ("cats@2", 0.5),
        ("cats@2", 0.8),
        ("cats", 0.5),
        ("cats", 0.8),
        ("catsup@1", 0.8),
        ("digits@1", 0.8),
    }
    low = band_rows(admin_client_for, "low")
    assert low == {
        ("cats@2", 0.05),
        ("cats", 0.05),
        ("catsup@1", 0.05),
        ("catsup@1", 0.2),
        ("digits@1", 0.05),
        ("digits@1", 0.2),
    }


def test_the_model_version_filter_lists_each_version_once_and_filters(admin_client_for, device_a):
    for version in ("digits@2", "digits@1", "cats@1", "digits@2", ""):
        add_prediction(device_a.device, model_version=version)
    response = admin_client_for.get(changelist("predictionlog"))
    spec = next(spec for spec in response.context["cl"].filter_specs if spec.parameter_name == "model_version")
    assert spec.lookup_choices == [
        ("", "(none)"),
        ("cats@1", "cats@1"),
        ("digits@1", "digits@1"),
        ("digits@2", "digits@2"),
    ]
    narrowed = admin_client_for.get(changelist("predictionlog"), {"model_version": "digits@2"})
    assert {row.model_version for row in narrowed.context["cl"].result_list} == {"digits@2"}
    assert len(narrowed.context["cl"].result_list) == 2


def test_the_label_filter_lists_recent_labels_and_filters(admin_client_for, device_a):
    for label in ("7", "3", "7"):
        add_prediction(device_a.device, label=label)
    response = admin_client_for.get(changelist("predictionlog"), {"label": "7"})
    spec = next(spec for spec in response.context["cl"].filter_specs if spec.parameter_name == "label")
    assert spec.lookup_choices == [("3", "3"), ("7", "7")]
    assert [row.label for row in response.context["cl"].result_list] == ["7", "7"]


def test_the_device_filter_takes_an_id_or_an_exact_name_and_lists_no_devices(admin_client_for, device_a, device_b):
    mine = add_prediction(device_a.device)
    add_prediction(device_b.device)
    for value in (str(device_a.device.pk), "device-a"):
        response = admin_client_for.get(changelist("predictionlog"), {"device": value})
        assert list(response.context["cl"].result_list) == [mine]
    assert b'name="device"' in response.content and b"device-b" not in response.content


def test_predictions_are_searched_by_exact_client_id_only(admin_client_for, device_a):
    mine = add_prediction(device_a.device, label="seven")
    add_prediction(device_a.device)
    found = admin_client_for.get(changelist("predictionlog"), {"q": str(mine.client_id)})
    assert list(found.context["cl"].result_list) == [mine]
    other = admin_client_for.get(changelist("predictionlog"), {"q": "seven"})
    assert other.status_code == 200 and list(other.context["cl"].result_list) == []


def test_prediction_thumbnails_point_to_the_stored_file_view(admin_client_for, device_a):
    with_image = add_prediction(device_a.device)
    image = add_image(device_a.device, with_image)
    add_prediction(device_a.device)  # no image: no thumbnail
    response = admin_client_for.get(changelist("predictionlog"))
    url = reverse("stored-file", args=["prediction_images", image.storage_key])
    assert response.content.count(b'loading="lazy"') == 1
    assert f'<a href="{url}"><img src="{url}?thumb=1" loading="lazy"'.encode() in response.content
    detail = admin_client_for.get(reverse("admin:devices_predictionlog_change", args=[with_image.pk]))
    assert f"{url}?thumb=1".encode() in detail.content and b"&quot;7&quot;: 0.5" in detail.content


def test_prediction_image_and_log_pages_open_their_files_through_the_stored_file_view(admin_client_for, device_a):
    image, log = add_image(device_a.device), add_oplog(device_a.device)
    images = admin_client_for.get(changelist("predictionimage")).content
    assert f"{reverse('stored-file', args=['prediction_images', image.storage_key])}?thumb=1".encode() in images
    logs = admin_client_for.get(changelist("operationallog")).content
    assert f'href="{reverse("stored-file", args=["oplogs", log.storage_key])}"'.encode() in logs


def test_a_state_snapshot_page_shows_the_state(admin_client_for, device_a):
    snapshot = add_snapshot(device_a.device)
    response = admin_client_for.get(reverse("admin:devices_statesnapshot_change", args=[snapshot.pk]))
    assert response.status_code == 200 and b"&quot;adwin&quot;" in response.content


def test_the_device_page_links_to_its_predictions_and_packages(admin_client_for, device_a):
    response = admin_client_for.get(reverse("admin:devices_device_change", args=[device_a.device.pk]))
    assert response.status_code == 200
    for model_name in ("predictionlog", "package"):
        assert f'href="{changelist(model_name)}?device={device_a.device.pk}"'.encode() in response.content


def test_the_package_device_filter_shows_only_that_devices_packages(admin_client_for, db):
    first, second = make_device("cam-1").device, make_device("cam-2").device
    add_package(first)
    add_package(second)
    response = admin_client_for.get(changelist("package"), {"device": str(second.pk)})
    assert [package.device_id for package in response.context["cl"].result_list] == [second.pk]
