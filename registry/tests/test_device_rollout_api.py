"""The device's side of a rollout over HTTP: the assignment in the heartbeat answer, the bundle
download (its own assignment only), and the reports that move the assignment."""

from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import asdict
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import heartbeat_body
from edge_client.bundles import BundleManager
from registry import rollouts
from registry.models import AssignmentState
from registry.rollouts import rollback, start_rollout
from registry.tests.test_rollouts import NEW, OLD, champion, version

HEARTBEAT = "/api/v1/device/heartbeat"
DESIRED_STATE = "/api/v1/device/desired-state"
pytestmark = pytest.mark.django_db


@pytest.fixture
def v1():
    return champion()


@pytest.fixture
def v2(v1):
    return version()


@pytest.fixture
def to_a(v2, device_a):
    """A rollout of digits@2 to device A alone."""
    return start_rollout(v2, target_kind="devices", devices=[device_a.device], phases=[1.0])


def bundle_url(version) -> str:
    return f"/api/v1/device/bundles/{version.pk}"


def heartbeat(api, persona, running=OLD, **fields):
    response = api.post(HEARTBEAT, heartbeat_body(model_version=running, **fields), format="json", **persona.auth)
    assert response.status_code == 200, response.content
    return response.json()


def download(api, persona, version):
    return api.get(bundle_url(version), **persona.auth)


def body(response) -> bytes:
    return b"".join(response.streaming_content)


class TestDesiredState:
    def test_the_heartbeat_answer_carries_the_devices_own_assignment_only(self, api, to_a, v2, device_a, device_b):
        model = heartbeat(api, device_a)["model"]
        assert model == {"version": NEW, "sha256": v2.bundle_sha256, "url": bundle_url(v2), "size": v2.bundle_size}
        assert heartbeat(api, device_b)["model"] is None
        assert api.get(DESIRED_STATE, **device_b.auth).json()["model"] is None

    def test_the_first_delivery_starts_the_download_clock(self, api, to_a, device_a):
        heartbeat(api, device_a)
        row = to_a.assignments.get()
        first = row.delivered_at
        assert row.deadline_at == first + timedelta(minutes=to_a.download_timeout_minutes)
        heartbeat(api, device_a)
        row.refresh_from_db()
        assert row.delivered_at == first

    def test_the_sync_path_costs_one_query_once_delivered(self, api, to_a, device_a):
        heartbeat(api, device_a)
        with CaptureQueriesContext(connection) as queries:
            rollouts.desired_state(device_a.device)
        assert len(queries) == 1, [query["sql"] for query in queries]
        # The heartbeat receiver's query serves the desired state answered right after it.
        with CaptureQueriesContext(connection) as queries:
            rollouts.on_heartbeat(device_a.device, {"model_version": OLD})
            rollouts.desired_state(device_a.device)
        assert len(queries) == 1, [query["sql"] for query in queries]


class TestReports:
    def test_reporting_the_assigned_version_makes_the_assignment_active(self, api, to_a, device_a):
        heartbeat(api, device_a)
        heartbeat(api, device_a, running=NEW)
        row = to_a.assignments.get()
        assert row.state == AssignmentState.ACTIVE
        assert row.active_at is not None

    def test_a_refused_bundle_fails_the_assignment_with_the_devices_error(self, api, to_a, device_a):
        heartbeat(api, device_a)
        outcome = {"status": "refused", "version": NEW, "error": "sha256 mismatch: got 00…"}
        answer = heartbeat(api, device_a, bundle=outcome)
        row = to_a.assignments.get()
        assert row.state == AssignmentState.FAILED
        assert "sha256 mismatch" in row.reason
        assert answer["model"]["version"] == OLD

    def test_an_outcome_for_another_version_changes_nothing(self, api, to_a, device_a):
        heartbeat(api, device_a, bundle={"status": "refused", "version": "digits@9", "error": "x"})
        assert to_a.assignments.get().state == AssignmentState.ASSIGNED


class TestDownload:
    def test_a_device_downloads_its_assigned_bundle(self, api, to_a, v2, device_a):
        heartbeat(api, device_a)
        response = download(api, device_a, v2)
        assert response.status_code == 200, response.content
        assert response["Content-Type"] == "application/gzip"
        assert hashlib.sha256(body(response)).hexdigest() == v2.bundle_sha256
        assert to_a.assignments.get().state == AssignmentState.DOWNLOADING

    def test_another_devices_version_is_not_found(self, api, to_a, v1, v2, device_a, device_b):
        response = download(api, device_b, v2)
        assert response.status_code == 404, response.content
        # Not even device A may fetch a version it is not told to run.
        assert download(api, device_a, v1).status_code == 404
        assert api.get("/api/v1/device/bundles/999999", **device_a.auth).status_code == 404
        assert to_a.assignments.get().state == AssignmentState.ASSIGNED

    def test_without_a_valid_device_token_it_is_401(self, api, operator_api, to_a, v2):
        assert api.get(bundle_url(v2)).status_code == 401
        assert api.get(bundle_url(v2), HTTP_AUTHORIZATION="Bearer sphd_nope_nope").status_code == 401
        assert operator_api.get(bundle_url(v2)).status_code == 401

    def test_only_get_is_allowed(self, api, to_a, v2, device_a):
        assert api.post(bundle_url(v2), {}, format="json", **device_a.auth).status_code == 405

    def test_during_a_rollback_the_device_gets_the_baseline_and_not_the_recalled_version(
        self, api, to_a, v1, v2, device_a
    ):
        heartbeat(api, device_a)
        heartbeat(api, device_a, running=NEW)
        rollback(to_a, reason="bad canary")
        assert heartbeat(api, device_a, running=NEW)["model"]["version"] == OLD
        assert download(api, device_a, v2).status_code == 404
        response = download(api, device_a, v1)
        assert response.status_code == 200
        assert hashlib.sha256(body(response)).hexdigest() == v1.bundle_sha256
        heartbeat(api, device_a, running=OLD)
        assert to_a.assignments.get().state == AssignmentState.ROLLED_BACK

    def test_on_s3_the_download_redirects_to_a_signed_url(self, api, s3_storages, v1, device_a):
        on_s3 = version()  # stored after the storages moved to S3
        start_rollout(on_s3, target_kind="devices", devices=[device_a.device], phases=[1.0])
        heartbeat(api, device_a)
        response = download(api, device_a, on_s3)
        assert response.status_code == 302, response.content
        location = response["Location"]
        assert location.startswith(f"{s3_storages.endpoint}/{s3_storages.bucket}/artifacts/{on_s3.bundle_key}?")
        assert "Signature=" in location
        assert "no-store" in response["Cache-Control"]
        # The signed URL serves the bundle itself (the object store is on loopback).
        with urllib.request.urlopen(location, timeout=10) as signed:  # noqa: S310
            assert hashlib.sha256(signed.read()).hexdigest() == on_s3.bundle_sha256


class _Http:
    """The edge client's http module, answered by the Django test client."""

    TooLarge = TransportError = RuntimeError

    def __init__(self, api):
        self.api = api

    def download(self, url, writer, *, max_bytes, token, timeout):
        response = self.api.get(url.removeprefix("http://testserver"), HTTP_AUTHORIZATION=f"Bearer {token}")
        if response.status_code == 200:
            writer.write(body(response))
        return _Answer(response.status_code)


class _Answer:
    def __init__(self, status):
        self.status, self.ok = status, status == 200

    def text(self, limit=None):
        return ""


def test_the_edge_client_installs_the_assignment_and_its_report_activates_it(api, to_a, device_a, tmp_path):
    bundles = BundleManager(
        tmp_path / "bundles", server_url="http://testserver", token=lambda: device_a.token, http=_Http(api)
    )
    outcome = bundles.apply(heartbeat(api, device_a)["model"])
    assert (outcome.status, outcome.version) == ("installed", NEW)
    heartbeat(api, device_a, running=bundles.current().version, bundle=asdict(outcome))
    assert to_a.assignments.get().state == AssignmentState.ACTIVE
