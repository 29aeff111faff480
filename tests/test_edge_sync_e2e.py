"""The edge client, run as on a device, against the real server (embedded topology, in-process
worker): prediction logs, drift packages and their samples all arrive exactly once, and the
device's outbox ends with nothing pending and nothing refused."""

from __future__ import annotations

import json
import time

import pytest

from edge_client.tests.test_cli import sphere_edge
from tests.live_server import running_sphere

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


def outbox(config) -> dict:
    status = sphere_edge("status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["store"]["counts"]


def pending_or_failed(counts: dict) -> dict:
    return {kind: n for kind, statuses in counts.items() for status, n in statuses.items() if status != "sent"}


def server_counts(server) -> dict:
    return json.loads(
        server.shell_value(
            """
            import json
            from devices.models import Package, PredictionLog
            from drift.models import DriftEvent, DriftSample
            print("RESULT=" + json.dumps({
                "predictions": PredictionLog.objects.count(),
                "distinct_predictions": PredictionLog.objects.values("client_id").distinct().count(),
                "packages": dict((s, Package.objects.filter(status=s).count()) for s in
                                 ["received", "processing", "processed", "failed"]),
                "errors": list(Package.objects.exclude(error="").values_list("error", flat=True)),
                "events": DriftEvent.objects.count(),
                "samples": DriftSample.objects.count(),
                "linked_samples": DriftSample.objects.exclude(event=None).count(),
                "unlinked_with_event": DriftSample.objects.exclude(event_client_id=None).filter(event=None).count(),
                "sample_images": DriftSample.objects.exclude(image_key="").count(),
            }))
            """
        )
    )


def test_a_drifting_device_delivers_its_logs_and_drift_packages_exactly_once(tmp_path):
    samples = 900
    with running_sphere(tmp_path / "server") as server:
        config = tmp_path / "device" / "sphere-edge.json"
        token = server.create_enrollment_token()
        enrolled = sphere_edge("enroll", "--server", server.url, "--token", token, "--config", str(config))
        assert enrolled.returncode == 0, enrolled.stderr

        run = sphere_edge(
            "run",
            "--config",
            str(config),
            "--source",
            "simulate:novel",
            "--limit",
            str(samples),
            "--rate",
            "0",
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        for _ in range(10):  # later runs ship what did not fit the first one's last cycle
            if not pending_or_failed(outbox(config)):
                break
            again = sphere_edge("run", "--config", str(config), "--limit", "0", "--rate", "0", timeout=120)
            assert again.returncode == 0, again.stderr
        counts = outbox(config)
        assert pending_or_failed(counts) == {}, counts
        assert counts["prediction"]["sent"] == samples

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = server_counts(server)
            if found["packages"]["received"] == found["packages"]["processing"] == 0:
                break
            time.sleep(1)
        assert found["predictions"] == found["distinct_predictions"] == samples, found
        assert found["packages"]["failed"] == 0, found["errors"]
        assert found["packages"]["processed"] >= 1, found
        assert found["events"] == counts["drift_event"]["sent"], (found, counts)
        assert found["samples"] == counts["quarantine_sample"]["sent"] > 0, (found, counts)
        # Samples flagged only as far from every class ship without an event (event_id null);
        # every sample that names its event is linked to it.
        assert found["linked_samples"] > 0 and found["unlinked_with_event"] == 0, found
        assert found["sample_images"] == found["samples"]


def test_an_operators_verdict_reaches_the_device_and_comes_back_acknowledged(tmp_path):
    with running_sphere(tmp_path / "server") as server:
        config = tmp_path / "device" / "sphere-edge.json"
        token = server.create_enrollment_token()
        assert sphere_edge("enroll", "--server", server.url, "--token", token, "--config", str(config)).returncode == 0
        run = sphere_edge(
            "run", "--config", str(config), "--source", "simulate:novel", "--limit", "900", "--rate", "0", timeout=300
        )
        assert run.returncode == 0, run.stderr
        decided = server.shell_value(
            """
            import time
            from drift import verdicts
            from drift.models import DriftEvent
            for _ in range(60):
                if DriftEvent.objects.exists():
                    break
                time.sleep(1)
            event = DriftEvent.objects.order_by("created").first()
            verdicts.decide(DriftEvent.objects.filter(pk=event.pk), "rejected", note="false alarm")
            print("RESULT=" + str(event.client_id))
            """
        )
        again = sphere_edge("run", "--config", str(config), "--limit", "0", "--rate", "0", timeout=120)
        assert again.returncode == 0, again.stderr
        acknowledged = server.shell_value(
            f"""
            from drift.models import DriftEvent
            event = DriftEvent.objects.get(client_id="{decided}")
            print("RESULT=" + event.acknowledged_status)
            """
        )
        assert acknowledged == "rejected"
