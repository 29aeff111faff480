"""The embedded topology end to end: `manage.py runsphere` in a subprocess, driven over HTTP and
websockets only, with its in-process worker, beat and channel layer doing the background work."""

from __future__ import annotations

import shutil

import pytest
from websockets.exceptions import InvalidStatus

from tests.live_server import HttpClient, enroll, heartbeat, open_live, running_sphere, wait_for_event

pytestmark = [pytest.mark.slow, pytest.mark.embedded]

FAST_FLEET = {"DEVICE_HEARTBEAT_PERIOD_S": 1, "DEVICE_HEARTBEAT_GRACE_S": 1, "DEVICE_STATUS_SWEEP_S": 1}


def test_the_embedded_server_enrolls_a_device_and_accepts_its_heartbeat(tmp_path):
    with running_sphere(tmp_path / "data", DEVICE_HEARTBEAT_PERIOD_S=30) as server:
        enrollment_token = server.create_enrollment_token(max_uses=1)
        operator = HttpClient(server.url)
        operator.login(server.create_operator())

        device = enroll(server, enrollment_token, name="edge-1")
        assert device["token"].startswith("sphd_")
        assert device["heartbeat_period_s"] == 30

        body = {"id": "6d0c3f56-7a1e-4a43-9a57-8f8a4f7a0001"}
        answer = heartbeat(server, device["token"], **body)
        assert answer.status == 200, answer
        assert answer.json()["device_id"] == device["device_id"]
        assert answer.json()["status"] == "online"
        replay = heartbeat(server, device["token"], **body)
        assert replay.status == 200, replay

        shown = operator.get(f"/api/v1/devices/{device['device_id']}/")
        assert shown.status == 200, shown
        assert shown.json()["status"] == "online"
        assert shown.json()["last_seen_at"] is not None
        assert shown.json()["last_telemetry"]["cpu_percent"] == 23.5
        telemetry = operator.get(f"/api/v1/telemetry/?device={device['device_id']}")
        assert len(telemetry.json()["results"]) == 1, telemetry


def test_the_embedded_server_refuses_a_used_up_token_and_an_unauthenticated_heartbeat(tmp_path):
    with running_sphere(tmp_path / "data") as server:
        enrollment_token = server.create_enrollment_token(max_uses=1)
        enroll(server, enrollment_token, name="edge-1")

        second = HttpClient(server.url).post(
            "/api/v1/enroll",
            json_body={
                "enrollment_token": enrollment_token,
                "request_id": "6d0c3f56-7a1e-4a43-9a57-8f8a4f7a0002",
                "name": "edge-2",
            },
        )
        assert second.status == 403, second
        assert heartbeat(server, "").status in (401, 403)
        assert HttpClient(server.url).get("/api/v1/devices/").status in (401, 403)


def test_the_in_process_beat_marks_a_silent_device_offline_and_pushes_the_change_live(tmp_path):
    with running_sphere(tmp_path / "data", **FAST_FLEET) as server:
        enrollment_token = server.create_enrollment_token()
        operator = HttpClient(server.url)
        session_id = operator.login(server.create_operator())
        device = enroll(server, enrollment_token, name="edge-silent")

        def is_ours(data):
            return data["id"] == device["device_id"]

        # Subscribe before the heartbeat: with a 1 s period the device is late a second later.
        with open_live(server, "fleet", session_id=session_id) as live:
            assert heartbeat(server, device["token"]).status == 200
            online = wait_for_event(live, "device.status", is_ours, timeout=5)
            assert online["status"] == "online"
            # From here on only the beat (sweep schedule) and the worker thread act.
            late = wait_for_event(live, "device.status", is_ours, timeout=15)
            assert (late["previous"], late["status"]) == ("online", "late")
            offline = wait_for_event(live, "device.status", is_ours, timeout=15)
            assert (offline["previous"], offline["status"]) == ("late", "offline")
            counts = wait_for_event(live, "fleet.counts", lambda data: data["offline"] == 1, timeout=5)
            assert counts["online"] == counts["late"] == 0

        shown = operator.get(f"/api/v1/devices/{device['device_id']}/")
        assert shown.status == 200, shown
        assert shown.json()["status"] == "offline"


def test_readiness_reports_database_broker_and_storage(tmp_path):
    data_dir = tmp_path / "data"
    with running_sphere(data_dir) as server:
        answer = HttpClient(server.url).get("/readyz")

        assert answer.status == 200, answer
        report = answer.json()
        assert report["ready"] is True, report
        assert set(report["checks"]) == {"database", "broker", "storage"}
        for name, check in report["checks"].items():
            assert check["ok"] is True, f"{name}: {check}"
            assert check["ms"] >= 0
        # The embedded topology keeps its database and broker in the data directory it was given.
        assert (data_dir / "sphere.sqlite3").is_file()
        assert (data_dir / "broker" / "queue").is_dir()


def test_readiness_fails_when_the_broker_or_media_folder_is_unusable(tmp_path):
    data_dir = tmp_path / "data"
    with running_sphere(data_dir) as server:
        # A file where a folder should be: the worker cannot read its queue, uploads cannot land.
        shutil.rmtree(data_dir / "broker" / "queue")
        (data_dir / "broker" / "queue").write_text("not a folder")
        shutil.rmtree(data_dir / "media", ignore_errors=True)
        (data_dir / "media").write_text("not a folder")

        answer = HttpClient(server.url).get("/readyz")

        assert answer.status == 503, answer
        checks = answer.json()["checks"]
        assert checks["database"]["ok"] is True, checks
        assert checks["broker"]["ok"] is False, checks
        assert checks["storage"]["ok"] is False, checks


def test_a_websocket_without_a_staff_session_is_refused(tmp_path):
    with running_sphere(tmp_path / "data") as server:
        operator_session = HttpClient(server.url).login(server.create_operator())
        # Staff may sign in to the admin, but without devices.view_device they may not watch.
        staff_session = HttpClient(server.url).login(server.create_user("stella", staff=True))
        server.create_user("oscar", staff=False)
        outsider_session = server.session_for("oscar")

        refused = [
            ("anonymous", "fleet", None, None),
            ("outsider (signed in, not staff)", "fleet", outsider_session, None),
            ("staff without the fleet permission", "fleet", staff_session, None),
            ("operator from a foreign origin", "fleet", operator_session, "http://evil.example"),
            ("operator on an unknown topic", "secrets", operator_session, None),
        ]
        for who, topic, session_id, origin in refused:
            with pytest.raises(InvalidStatus) as refusal:
                open_live(server, topic, session_id=session_id, origin=origin).close()
            assert refusal.value.response.status_code == 403, who

        with open_live(server, "fleet", session_id=operator_session) as live:
            assert live.ping().wait(5)  # the operator's socket is accepted and stays open
