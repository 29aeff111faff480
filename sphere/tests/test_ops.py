"""Liveness, readiness and Prometheus metrics."""

from pathlib import Path

import pytest
from django.core.files.storage import storages

from conftest import heartbeat_body

pytestmark = pytest.mark.django_db


def test_liveness_answers_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_checks_database_broker_and_storage(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"database", "broker", "storage"}


def test_readiness_fails_with_the_reason_when_a_dependency_is_down(client, monkeypatch):
    def broken():
        raise ConnectionError("broker unreachable")

    monkeypatch.setitem(__import__("sphere.ops").ops.READINESS_PROBES, "broker", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == {
        "ok": False,
        "error": "ConnectionError: broker unreachable",
        "ms": response.json()["checks"]["broker"]["ms"],
    }


def test_readiness_checks_the_folder_of_every_storage_area(client, settings):
    blocked = Path(settings.STORAGES["oplogs"]["OPTIONS"]["location"])
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the area's folder should be")
    response = client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["checks"]["storage"]["error"]
    assert error.startswith("StorageUnavailable: area oplogs: FileExistsError"), error


def test_readiness_reaches_each_s3_bucket_once(client, settings, s3_storages):
    asked = []
    for name in ("default", *settings.STORAGE_AREAS):
        events = storages[name].connection.meta.client.meta.events
        events.register("before-parameter-build.s3.HeadBucket", lambda params, **_: asked.append(params["Bucket"]))
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert sorted(asked) == sorted([s3_storages.bucket, *s3_storages.own_buckets.values()])


def test_readiness_fails_when_the_bucket_of_an_area_is_missing(client, s3_storages):
    # exists() on a key would answer False here, as for any missing key: the probe asks for the bucket.
    (area, bucket), *_ = s3_storages.own_buckets.items()
    s3_storages.client.delete_bucket(Bucket=bucket)
    response = client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["checks"]["storage"]["error"]
    assert error.startswith(f"StorageUnavailable: area {area}: ClientError"), error
    assert "HeadBucket" in error


def test_metrics_report_requests_by_route_fleet_counts_and_queue_depths(client, api, device_a):
    api.post("/api/v1/device/heartbeat", heartbeat_body(), format="json", **device_a.auth)
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'sphere_http_requests_total{method="POST",route="api/v1/device/heartbeat",status="200"}' in text
    assert 'sphere_http_request_duration_seconds_bucket{le="0.1",method="POST",route="api/v1/device/heartbeat"}' in text
    assert 'sphere_devices{status="online"} 1.0' in text
    assert 'sphere_queue_depth{queue="ingest"}' in text


def test_metrics_need_the_token_when_one_is_configured(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_the_innermost_middleware_is_sync_only_so_the_chain_runs_in_one_thread(settings):
    from django.utils.module_loading import import_string

    last = import_string(settings.MIDDLEWARE[-1])
    assert getattr(last, "sync_capable", True) and not getattr(last, "async_capable", False)
