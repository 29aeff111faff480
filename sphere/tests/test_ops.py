"""Liveness, readiness and Prometheus metrics."""

import pytest

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
