"""The sphere-edge command, run as a subprocess exactly as on a device."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sphere_edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=_env(),
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def simulate(scenario: str, limit: int = 600) -> dict:
    result = sphere_edge("simulate", scenario, "--limit", str(limit), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- user errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "status"])
def test_it_refuses_an_ill_typed_key_naming_it_with_exit_2(tmp_path, command):
    config = write_config(tmp_path / "c.json", {"sync": {"prediction_batch_size": "50"}})
    result = (
        sphere_edge(command, "--config", str(config), "--limit", "1")
        if command == "run"
        else (sphere_edge(command, "--config", str(config)))
    )
    assert result.returncode == 2, result.stderr
    assert "sync.prediction_batch_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_refuses_an_unknown_key_with_a_suggestion(tmp_path):
    config = write_config(tmp_path / "c.json", {"servr_url": "http://x"})
    result = sphere_edge("status", "--config", str(config))
    assert result.returncode == 2
    assert "servr_url: unknown key (did you mean 'server_url'?)" in result.stderr


def test_it_refuses_a_missing_config_file_with_exit_2(tmp_path):
    result = sphere_edge("status", "--config", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "cannot read the config file" in result.stderr and "Traceback" not in result.stderr


def test_it_refuses_an_unknown_source_with_exit_2(tmp_path):
    config = write_config(tmp_path / "c.json", {})
    result = sphere_edge("run", "--config", str(config), "--source", "camera:0", "--limit", "1")
    assert result.returncode == 2
    assert "only simulate:" in result.stderr


def test_a_usage_error_exits_2_without_a_traceback():
    result = sphere_edge("simulate", "sideways")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_config_describe_lists_every_section():
    result = sphere_edge("config", "--describe")
    assert result.returncode == 0
    for key in ("server_url", "sync.heartbeat_period_s", "store.max_bytes", "detectors"):
        assert key in result.stdout


# --- simulate ----------------------------------------------------------------------------------


def test_simulate_stays_quiet_on_a_stationary_stream():
    summary = simulate("stationary")
    assert summary["samples"] == 600
    assert summary["detections"] == []
    assert summary["accuracy"] > 0.9


@pytest.mark.parametrize("scenario", ["brightness", "novel"])
def test_simulate_reports_drift_after_the_onset_of_a_shift(scenario):
    summary = simulate(scenario)
    assert summary["detections"], summary
    assert min(d["sample"] for d in summary["detections"]) >= summary["onset"]


def test_simulate_prints_detections_with_their_sample_index():
    result = sphere_edge("simulate", "brightness", "--limit", "600")
    assert result.returncode == 0, result.stderr
    assert "accuracy:" in result.stdout and "latency ms:" in result.stdout
    assert "drift detections:" in result.stdout and "  sample " in result.stdout


# --- status ------------------------------------------------------------------------------------


def test_status_on_a_fresh_data_dir_creates_nothing(tmp_path):
    config = write_config(tmp_path / "device" / "c.json", {})
    result = sphere_edge("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "enrolled: False" in result.stdout
    assert "store: none yet" in result.stdout and "bundle: none" in result.stdout
    assert "last sync: never" in result.stdout
    assert not (tmp_path / "device" / "data").exists()


def test_an_offline_run_keeps_everything_in_the_outbox(tmp_path):
    config = write_config(tmp_path / "c.json", {})
    result = sphere_edge("run", "--config", str(config), "--limit", "40", "--rate", "0")
    assert result.returncode == 0, result.stderr
    assert "processed 40 samples" in result.stdout
    status = json.loads(sphere_edge("status", "--config", str(config), "--json").stdout)
    assert status["store"]["counts"]["prediction"]["pending"] == 40


def test_a_run_without_a_device_token_exits_3(tmp_path):
    config = write_config(tmp_path / "c.json", {"server_url": "http://127.0.0.1:9"})
    result = sphere_edge("run", "--config", str(config), "--limit", "5", "--rate", "0")
    assert result.returncode == 3, result.stderr
    assert "enroll this device first" in result.stderr


# --- against the real server -------------------------------------------------------------------


def _device(server, session: str, name: str) -> dict | None:
    from tests.live_server import HttpClient

    answer = HttpClient(server.url).get("/api/v1/devices/", headers={"Cookie": f"sessionid={session}"})
    assert answer.status == 200, answer
    body = answer.json()
    devices = body["results"] if isinstance(body, dict) else body
    return next((device for device in devices if device["name"] == name), None)


def _wait_for_status(server, session: str, name: str, wanted: str, timeout: float = 20) -> dict:
    deadline, device = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        device = _device(server, session, name)
        if device and device["status"] == wanted:
            return device
        time.sleep(0.2)
    raise AssertionError(f"{name} not {wanted} within {timeout} s: {device}")


@pytest.mark.slow
@pytest.mark.embedded
def test_enroll_then_run_brings_the_device_online_and_sigterm_takes_it_offline(tmp_path):
    from tests.live_server import running_sphere

    with running_sphere(tmp_path / "server") as server:
        operator = server.create_operator()
        session = server.session_for(operator.username)
        config = tmp_path / "device" / "sphere-edge.json"
        enrolled = sphere_edge(
            "enroll",
            "--server",
            server.url,
            "--token",
            server.create_enrollment_token(),
            "--name",
            "edge-cli",
            "--config",
            str(config),
        )
        assert enrolled.returncode == 0, enrolled.stderr
        token_file = config.parent / "data" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["server_url"] == server.url

        run = subprocess.Popen(
            [sys.executable, "-m", "edge_client", "run", "--config", str(config), "--rate", "50"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_status(server, session, "edge-cli", "online")
        finally:
            run.send_signal(signal.SIGTERM)
            stdout, stderr = run.communicate(timeout=30)
        assert run.returncode == 0, stderr
        assert "processed" in stdout
        _wait_for_status(server, session, "edge-cli", "offline", timeout=10)

        status = sphere_edge("status", "--config", str(config))
        assert "enrolled: True" in status.stdout and "last sync: never" not in status.stdout


@pytest.mark.slow
@pytest.mark.embedded
def test_enrolling_twice_is_refused_without_a_second_device(tmp_path):
    from tests.live_server import running_sphere

    with running_sphere(tmp_path / "server") as server:
        config = tmp_path / "device" / "sphere-edge.json"
        token = server.create_enrollment_token()
        first = sphere_edge("enroll", "--server", server.url, "--token", token, "--config", str(config))
        assert first.returncode == 0, first.stderr
        second = sphere_edge("enroll", "--server", server.url, "--token", token, "--config", str(config))
        assert second.returncode == 1
        assert "enrolled already" in second.stderr and "Traceback" not in second.stderr


def test_enroll_with_a_bad_token_exits_1_and_writes_nothing(tmp_path):
    config = tmp_path / "device" / "sphere-edge.json"
    result = sphere_edge("enroll", "--server", "http://127.0.0.1:9", "--token", "x", "--config", str(config))
    assert result.returncode == 1
    assert "cannot reach" in result.stderr or "enrollment refused" in result.stderr
    assert not config.exists()
