"""The sync client against a real (flaky) HTTP server, and against the real Sphere server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_client import __version__, http
from edge_client.bundles import BundleManager
from edge_client.config import SyncSection
from edge_client.store import DRIFT_EVENT, METRIC, PREDICTION, QUARANTINE_SAMPLE, Store
from edge_client.sync import CredentialError, EnrollmentError, SyncClient, enroll
from edge_client.telemetry import Telemetry, runtime_info
from edge_client.tests import flaky_server
from edge_client.tests.flaky_server import ENROLLMENT_TOKEN, TOKEN, FlakyServer

ROOT = Path(__file__).resolve().parents[2]
FAST = SyncSection(
    request_timeout_s=0.25,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    prediction_batch_size=25,
    package_batch_size=10,
)
FLAKY = {"error": 0.1, "drop": 0.1, "drop_after": 0.15, "stall": 0.05}
HEARTBEAT_FIELDS = flaky_server.HEARTBEAT_FIELDS


@pytest.fixture
def server():
    with FlakyServer(stall_s=0.4) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        yield store


def token_file(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def client_for(server, store, tmp_path, **kwargs) -> SyncClient:
    kwargs.setdefault("settings", FAST)
    kwargs.setdefault("telemetry", Telemetry(disk_path=tmp_path))
    return SyncClient(server.url, token_file(tmp_path), store, rng=random.Random(3), **kwargs)


def pending(store: Store) -> int:
    return sum(statuses.get("pending", 0) for statuses in store.counts().values())


def drain(client: SyncClient, store: Store, rounds: int = 400) -> int:
    for cycle in range(1, rounds + 1):
        client.sync_once()
        if not pending(store):
            return cycle
        time.sleep(0.012)  # past the (tiny) backoff of the records put back
    raise AssertionError(f"still {pending(store)} pending records after {rounds} cycles: {store.counts()}")


def sent_ids(store: Store, kind: str) -> set[str]:
    return {row[0] for row in store._db.execute("SELECT id FROM item WHERE kind = ? AND status = 'sent'", (kind,))}


def predict(store: Store, n: int, **payload) -> list[str]:
    return [
        store.append(PREDICTION, {"model_version": "digits@1", "label": str(i % 10), "confidence": 0.9, **payload})
        for i in range(n)
    ]


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def drift_event(store: Store, samples: int) -> tuple[str, list[str]]:
    event = store.append(DRIFT_EVENT, {"detector": "knn_distance", "statistic": 4.2})
    children = [
        store.append(
            QUARANTINE_SAMPLE,
            {"label": "3", "confidence": 0.41},
            attachments={"image.png": os.urandom(600), "features.npy": os.urandom(256)},
            parent=event,
        )
        for _ in range(samples)
    ]
    return event, children


# --- nothing lost, nothing duplicated -------------------------------------------------------------


def test_it_ships_every_prediction_exactly_once_through_timeouts_500s_and_dropped_connections(server, store, tmp_path):
    ids = predict(store, 300)
    server.set_faults(**FLAKY, seed=7)

    drain(client_for(server, store, tmp_path), store)

    assert set(server.faults_drawn["/api/v1/device/predictions"]) == {None, *FLAKY}, "every fault should occur"
    assert set(server.records["prediction"]) == set(ids) == sent_ids(store, PREDICTION)
    replays = sum(server.receipts[item_id] for item_id in ids) - len(ids)
    assert replays > 0, "answers lost after the work was done should have made the client resend"
    # Every heartbeat the device acknowledged reached the server once, live or in a metrics package.
    assert set(server.records["heartbeat"]) == sent_ids(store, METRIC)


def test_it_ships_drift_events_with_their_samples_and_loose_samples_exactly_once(server, store, tmp_path):
    events = [drift_event(store, samples=3) for _ in range(4)]
    loose = [store.append(QUARANTINE_SAMPLE, {"label": "8"}, attachments={"image.png": b"png"}) for _ in range(3)]
    server.set_faults(**FLAKY, seed=5)

    drain(client_for(server, store, tmp_path), store)

    assert set(server.records["drift_event"]) == {event for event, _ in events}
    samples = {sample: event for event, children in events for sample in children}
    assert set(server.records["quarantine_sample"]) == set(samples) | set(loose)
    for sample, event in samples.items():
        assert server.records["quarantine_sample"][sample]["event_id"] == event
        assert server.attachments[f"{sample}/image.png"] == store.attachments(sample)["image.png"]
    assert {server.records["quarantine_sample"][sample]["event_id"] for sample in loose} == {None}


WORKER = textwrap.dedent(
    """
    import random, sys
    sys.path.insert(0, sys.argv[1])
    from edge_client.config import SyncSection
    from edge_client.store import Store
    from edge_client.sync import SyncClient
    store = Store(sys.argv[3])
    settings = SyncSection(request_timeout_s=0.25, backoff_base_s=0.001, backoff_max_s=0.01, prediction_batch_size=5)
    client = SyncClient(sys.argv[2], sys.argv[4], store, settings=settings, rng=random.Random(1))
    print("started", flush=True)
    while True:
        client.sync_once()
    """
)


def test_a_sync_process_killed_mid_upload_resumes_without_loss_or_duplicates(server, tmp_path):
    path = tmp_path / "outbox.sqlite3"
    with Store(path) as store:
        ids = predict(store, 400)
    server.set_faults(error=0.1, drop_after=0.2, seed=2)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(ROOT), server.url, str(path), str(token_file(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 20
    while len(server.records["prediction"]) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert 0 < len(server.records["prediction"]) < len(ids), "the kill should land half-way"

    with Store(path) as store:  # the restarted device
        drain(client_for(server, store, tmp_path), store)
        assert set(server.records["prediction"]) == set(ids) == sent_ids(store, PREDICTION)


# --- error classes --------------------------------------------------------------------------------


def test_a_refused_token_stops_the_client_and_reports_a_credential_problem(server, store, tmp_path):
    predict(store, 5)
    client = SyncClient(server.url, token_file(tmp_path, "sphd_wrong_token"), store, settings=FAST)
    with pytest.raises(CredentialError, match="re-enroll or rotate"):
        client.sync_once()

    stop = threading.Event()
    assert client.run(stop) == "credentials"
    assert "refused the device token" in client.problem
    assert server.count("POST", "/api/v1/device/heartbeat") == 2  # one per attempt, no hammering
    assert server.count("POST", "/api/v1/device/predictions") == 0


def test_without_a_server_url_the_client_stays_offline_and_keeps_everything(store, tmp_path):
    ids = predict(store, 3)
    report = SyncClient("", token_file(tmp_path), store, settings=FAST).sync_once()
    assert "running offline" in report.error
    assert [item.id for item in store.pending(PREDICTION)] == ids


def test_a_device_without_a_token_is_told_to_enroll(server, store, tmp_path):
    client = SyncClient(server.url, tmp_path / "absent", store, settings=FAST)
    with pytest.raises(CredentialError, match="enroll this device first"):
        client.sync_once()


def test_a_record_the_server_refuses_is_marked_failed_with_its_reason_and_never_resent(server, store, tmp_path):
    good = predict(store, 18)
    bad = predict(store, 2, confidence=3.0)
    client = client_for(server, store, tmp_path)

    report = client.sync_once()

    assert report.failed[PREDICTION] == 2 and report.sent[PREDICTION] == 18
    assert set(server.records["prediction"]) == set(good)
    for item_id in bad:
        assert store.get(item_id).status == "failed"
        assert "Must be a number between 0 and 1" in store.get(item_id).last_error
    client.sync_once()
    assert server.count("POST", "/api/v1/device/predictions") == 1


def test_a_batch_refused_whole_is_split_until_the_bad_record_is_alone(server, store, tmp_path):
    server.strict_batches = True
    ids = predict(store, 24)
    bad = store.append(PREDICTION, {"label": "1", "confidence": "high"})
    more = predict(store, 7)

    client_for(server, store, tmp_path).sync_once()

    assert set(server.records["prediction"]) == set(ids) | set(more)
    assert store.get(bad).status == "failed" and "confidence" in store.get(bad).last_error
    assert server.count("POST", "/api/v1/device/predictions") <= 2 + 2 * 5  # halving, not one by one


def test_server_errors_and_a_missing_endpoint_are_retried_later_not_dropped(server, store, tmp_path):
    server.disabled_paths.add("/api/v1/device/predictions")  # a server without the ingestion endpoint yet
    ids = predict(store, 3)
    client = client_for(server, store, tmp_path, settings=SyncSection(backoff_base_s=60, backoff_max_s=60))

    report = client.sync_once()
    client.sync_once()

    assert report.retried[PREDICTION] == 3 and "HTTP 404" in report.problems[0]
    assert report.ok  # the server answered the heartbeat: heartbeats keep their period
    assert server.count("POST", "/api/v1/device/predictions") == 1  # the retry waits for its time
    for item_id in ids:
        item = store.get(item_id)
        assert (item.status, item.attempts) == ("pending", 1)
        assert item.next_attempt_at > time.time()


def test_an_oversized_package_is_split_and_a_record_too_big_alone_is_refused(server, store, tmp_path):
    server.max_package_bytes = 4000
    event, samples = drift_event(store, samples=4)  # ~1 KB per sample
    huge = store.append(QUARANTINE_SAMPLE, {}, attachments={"image.png": os.urandom(8000)})

    drain(client_for(server, store, tmp_path), store, rounds=20)

    assert set(server.records["quarantine_sample"]) == set(samples)
    assert event in server.records["drift_event"]
    assert store.get(huge).status == "failed" and "413" in store.get(huge).last_error


def test_backoff_is_full_jitter_bounded_by_its_cap():
    rng = random.Random(0)
    delays = [http.backoff_delay(attempt, 2.0, 600.0, rng) for attempt in range(1, 200) for _ in range(5)]
    assert all(0 <= delay <= 600.0 for delay in delays)
    assert max(http.backoff_delay(1, 2.0, 600.0, rng) for _ in range(100)) <= 2.0
    assert max(http.backoff_delay(10_000, 2.0, 600.0, rng) for _ in range(100)) > 300.0


# --- heartbeats and the desired state -------------------------------------------------------------


def test_the_heartbeat_carries_the_servers_fields_and_the_desired_state_is_applied(server, store, tmp_path):
    applied = []

    class Bundles:
        def current(self):
            return None

        def last_outcome(self):
            return None

        def apply(self, model):
            applied.append(model)
            return "installed"

    server.desired.update(heartbeat_period_s=15, model={"version": "digits@2"})
    client = client_for(server, store, tmp_path, bundles=Bundles())

    report = client.sync_once()

    assert report.heartbeat and report.bundle == "installed"
    (heartbeat,) = server.records["heartbeat"].values()
    assert set(heartbeat) <= HEARTBEAT_FIELDS and {"id", "cpu_percent", "uptime_s", "runtime"} <= set(heartbeat)
    assert "bundle" not in heartbeat  # no bundle applied yet: no outcome to report
    assert applied == [{"version": "digits@2"}]
    assert client.heartbeat_period_s == 15
    assert store.get_meta("device_id") == server.device_id


def test_the_heartbeat_carries_the_runtime_and_the_outcome_of_the_last_bundle_applied(server, store, tmp_path):
    weights = npz_bytes(version=np.array(2))
    server.files["weights.npz"] = weights
    sha256 = hashlib.sha256(weights).hexdigest()
    server.desired["model"] = {"version": "digits@2", "sha256": sha256, "url": "/files/weights.npz", "size": None}
    bundles = BundleManager(tmp_path / "bundles", server_url=server.url, token=lambda: TOKEN, clock=lambda: 1700.5)
    client = client_for(server, store, tmp_path, bundles=bundles)

    first = client.sync_once()
    second = client.sync_once()

    assert first.bundle.status == "installed" and second.bundle.status == "unchanged"
    before, after = server.records["heartbeat"].values()  # in the order received
    runtime = {"python": platform.python_version(), "numpy": np.__version__, "client": __version__}
    assert runtime.items() <= after["runtime"].items() and after["runtime"] == before["runtime"] == runtime_info()
    assert after["runtime"]["memory_total_mb"] > 0
    assert "bundle" not in before
    assert after["bundle"] == {
        "status": "installed",
        "version": "digits@2",
        "sha256": sha256,
        "error": "",
        "at": 1700.5,
    }
    assert after["model_version"] == "digits@2"


def test_the_heartbeat_reports_a_refused_bundle_within_the_servers_limits(server, store, tmp_path):
    bundles = BundleManager(tmp_path / "bundles", server_url=server.url, clock=lambda: 1700.0)
    assert bundles.apply({"version": "v" * 200, "sha256": "ABC", "url": "/files/x"}).status == "refused"
    outcome_file = tmp_path / "bundles" / "last_outcome.json"
    outcome_file.write_text(json.dumps({**json.loads(outcome_file.read_text()), "error": "x\x00" * 3000, "extra": 1}))

    client_for(server, store, tmp_path, bundles=bundles).sync_once()

    (heartbeat,) = server.records["heartbeat"].values()
    assert heartbeat["bundle"] == {
        "status": "refused",
        "version": "v" * 80,
        "sha256": None,
        "error": "x" * 2000,
        "at": 1700.0,
    }


def test_a_refused_heartbeat_still_fetches_the_desired_state(server, store, tmp_path):
    class OddTelemetry:
        def sample(self):
            return {"gpu_percent": 3.0}  # a field this server does not know

    server.desired["verdicts"] = [{"event_id": "e1", "status": "confirmed"}]
    seen = []
    client = client_for(server, store, tmp_path, telemetry=OddTelemetry(), on_verdict=lambda *v: seen.append(v))

    report = client.sync_once()

    assert report.failed[METRIC] == 1 and report.ok
    assert seen == [("e1", "confirmed")]
    assert server.count("GET", "/api/v1/device/desired-state") == 1


def test_verdicts_are_applied_once_acknowledged_and_retried_when_the_callback_fails(server, store, tmp_path):
    server.desired["verdicts"] = [
        {"event_id": "e1", "status": "confirmed"},
        {"event_id": "e2", "status": "rejected"},
        {"event_id": 7},  # malformed: ignored
    ]
    calls, broken = [], {"e2"}

    def on_verdict(event_id, status):
        calls.append((event_id, status))
        if event_id in broken:
            raise RuntimeError("state manager busy")

    client = client_for(server, store, tmp_path, on_verdict=on_verdict)
    client.sync_once()
    assert calls == [("e1", "confirmed"), ("e2", "rejected")]
    assert server.acks == [{"event_id": "e1", "status": "confirmed"}]

    broken.clear()
    client.sync_once()  # e2 is still pending on the server: applied again, now acknowledged
    client.sync_once()  # nothing left
    assert calls == [("e1", "confirmed"), ("e2", "rejected"), ("e2", "rejected")]
    assert server.desired["verdicts"] == [{"event_id": 7}]


def test_an_ack_that_cannot_be_delivered_is_resent_without_applying_the_verdict_again(server, store, tmp_path):
    server.desired["verdicts"] = [{"event_id": "e1", "status": "confirmed"}]
    server.disabled_paths.add("/api/v1/device/verdict-acks")
    calls = []
    client = client_for(server, store, tmp_path, on_verdict=lambda *verdict: calls.append(verdict))

    client.sync_once()
    client.sync_once()
    server.disabled_paths.clear()
    client.sync_once()

    assert calls == [("e1", "confirmed")]
    assert server.acks == [{"event_id": "e1", "status": "confirmed"}]


def test_heartbeats_missed_while_offline_ship_later_in_a_metrics_package(server, store, tmp_path):
    client = client_for(server, store, tmp_path)
    server.set_faults(error=1.0, paths=("/api/v1/device/heartbeat",))
    for _ in range(3):
        assert not client.sync_once().ok
    server.set_faults()

    client.sync_once()

    metrics = sent_ids(store, METRIC)
    assert len(metrics) == 4 and set(server.records["heartbeat"]) == metrics
    (package,) = server.packages.values()
    assert package["kind"] == "metrics" and len(package["records"]) == 3


def test_run_heartbeats_on_the_servers_period_until_stopped(server, store, tmp_path):
    server.desired["heartbeat_period_s"] = 0.05
    client = client_for(server, store, tmp_path)
    stop = threading.Event()
    runner = threading.Thread(target=lambda: setattr(stop, "result", client.run(stop)))
    runner.start()
    time.sleep(0.5)
    stop.set()
    runner.join(5)
    assert stop.result == "stopped"
    assert 3 <= len(server.records["heartbeat"]) <= 15


def test_a_rebuilt_package_is_byte_identical(server, store, tmp_path):
    event, _ = drift_event(store, samples=2)
    client = client_for(server, store, tmp_path)
    items = [store.get(event), *store.children(event)]
    first = client._build_package("drift_event", items)
    first_bytes = first.path.read_bytes()
    second = client._build_package("drift_event", items)
    assert (first.id, first.sha256) == (second.id, second.sha256)
    assert second.path.read_bytes() == first_bytes


# --- enrollment -----------------------------------------------------------------------------------


def test_enroll_stores_the_token_readable_by_the_owner_only(server, tmp_path):
    path = tmp_path / "state" / "token"
    enrollment = enroll(server.url, ENROLLMENT_TOKEN, "edge-7", token_file=path, location="line 2")

    assert enrollment.token == TOKEN and enrollment.device_id == server.device_id
    assert path.read_text().strip() == TOKEN
    assert path.stat().st_mode & 0o777 == 0o600
    assert not path.with_name("token.request-id").exists()
    (profile,) = server.enrollments.values()
    assert (profile["name"], profile["location"], profile["client_version"]) == ("edge-7", "line 2", "0.1.0")
    with pytest.raises(EnrollmentError, match="enrolled already"):
        enroll(server.url, ENROLLMENT_TOKEN, "edge-7", token_file=path)


def test_an_enrollment_retried_after_a_lost_answer_reuses_its_request_id(server, tmp_path):
    path = tmp_path / "token"
    server.set_faults(drop_after=1.0)
    with pytest.raises(http.TransportError):
        enroll(server.url, ENROLLMENT_TOKEN, "edge-7", token_file=path)
    server.set_faults()

    enroll(server.url, ENROLLMENT_TOKEN, "edge-7", token_file=path)

    assert len(server.enrollments) == 1 and path.exists()


def test_a_refused_enrollment_says_why(server, tmp_path):
    with pytest.raises(EnrollmentError, match="HTTP 401.*Unknown enrollment token") as error:
        enroll(server.url, "sphe_wrong", "edge-7", token_file=tmp_path / "token")
    assert error.value.status == 401 and not (tmp_path / "token").exists()


# --- against the real Sphere server ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.embedded
def test_the_client_enrolls_and_heartbeats_against_the_real_server(tmp_path):
    from tests.live_server import HttpClient, running_sphere

    with running_sphere(tmp_path / "server", DEVICE_HEARTBEAT_PERIOD_S=30) as sphere:
        path = tmp_path / "device" / "token"
        enrollment = enroll(sphere.url, sphere.create_enrollment_token(), "edge-real", token_file=path)
        with Store(tmp_path / "device" / "outbox.sqlite3") as store:
            client = SyncClient(sphere.url, path, store, telemetry=Telemetry(disk_path=tmp_path))
            first, second = client.sync_once(heartbeat=True), client.sync_once(heartbeat=True)
            assert first.heartbeat and second.heartbeat, (first, second)
            assert "ignored_fields" not in first.desired_state, first.desired_state
            assert first.desired_state["device_id"] == enrollment.device_id
            assert first.desired_state["status"] == "online"
            assert client.heartbeat_period_s == 30
            assert store.counts()[METRIC] == {"sent": 2}

        operator = HttpClient(sphere.url)
        operator.login(sphere.create_operator())
        shown = operator.get(f"/api/v1/devices/{enrollment.device_id}/")
        assert shown.status == 200, shown
        assert (shown.json()["status"], shown.json()["client_version"]) == ("online", "0.1.0")
        assert shown.json()["last_telemetry"]["uptime_s"] > 0
        telemetry = operator.get(f"/api/v1/telemetry/?device={enrollment.device_id}")
        assert len(telemetry.json()["results"]) == 2, telemetry
