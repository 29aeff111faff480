"""Operators read prediction logs and packages through the API, and requeue packages."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Package, PackageStatus
from devices.tests.packages import build, metrics_lines, upload
from devices.tests.test_predictions import record

pytestmark = pytest.mark.django_db


def send(api, persona, records):
    raw = json.dumps({"predictions": records}).encode()
    response = api.generic("POST", "/api/v1/device/predictions", raw, content_type="application/json", **persona.auth)
    assert response.status_code == 200, response.content


def test_predictions_and_packages_are_refused_to_anonymous_callers_outsiders_and_devices(api, outsider_api, device_a):
    for url in ["/api/v1/predictions/", "/api/v1/packages/"]:
        assert api.get(url).status_code == 401
        assert outsider_api.get(url).status_code == 403
        assert api.get(url, **device_a.auth).status_code == 403


def test_an_operator_filters_predictions_by_device_model_and_confidence(operator_api, api, device_a, device_b):
    send(api, device_a, [record(confidence=0.5), record(confidence=0.9), record(confidence=0.6, model_version="x@1")])
    send(api, device_b, [record(confidence=0.55)])
    rows = operator_api.get(
        "/api/v1/predictions/",
        {"device": device_a.device.pk, "model_version": "digits@3", "confidence_min": 0.4, "confidence_max": 0.7},
    ).json()["results"]
    assert [(row["confidence"], row["device"]) for row in rows] == [(0.5, str(device_a.device.pk))]
    assert rows[0]["features"] == record()["features"]


def test_the_prediction_list_costs_the_same_queries_for_5_or_50_rows(operator_api, api, device_a):
    send(api, device_a, [record() for _ in range(5)])
    with CaptureQueriesContext(connection) as few:
        assert operator_api.get("/api/v1/predictions/").status_code == 200
    send(api, device_a, [record() for _ in range(45)])
    with CaptureQueriesContext(connection) as many:
        assert len(operator_api.get("/api/v1/predictions/").json()["results"]) == 50
    assert len(many.captured_queries) == len(few.captured_queries)


def test_an_operator_lists_failed_packages_and_requeues_one(
    operator_api, api, device_a, django_capture_on_commit_callbacks
):
    archive = build(device_a.device, "metrics", [("metrics.jsonl", b"not json\n")])
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, archive)
    failed = operator_api.get("/api/v1/packages/", {"status": "failed"}).json()["results"]
    assert len(failed) == 1 and "not valid JSON" in failed[0]["error"]
    with django_capture_on_commit_callbacks(execute=True):
        answer = operator_api.post(f"/api/v1/packages/{failed[0]['id']}/reprocess/")
    assert answer.json() == {"queued": 1}
    package = Package.objects.get()
    assert package.status == PackageStatus.FAILED and package.attempts == 2  # the same bad archive, run again


def test_requeueing_needs_the_change_permission(api, django_user_model, device_a, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("vera", password="pw-vera-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_package"))
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, device_a, build(device_a.device, "metrics", [("metrics.jsonl", metrics_lines())]))
    api.force_login(viewer)
    package = Package.objects.get()
    assert api.post(f"/api/v1/packages/{package.pk}/reprocess/").status_code == 403
