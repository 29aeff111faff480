"""Package processing in real worker processes: killed mid-package, recovered, and raced.

The workers share the test's database, Redis and storage (DATA_DIR is the test's tmp_path, so
DATA_DIR/media is where the test stores packages). A worker started with
tests.ingest_pause_settings stops once inside the metrics handler's transaction, rows written but
not committed (tests/ingest_pause), so the kill lands at a known point.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from celery.signals import after_task_publish
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from conftest import make_device
from devices.ingest import processing, uploads
from devices.models import Package, PackageStatus, Telemetry
from devices.tasks import process_package, recover_packages
from devices.tests.packages import build, metrics_lines
from tests.celery_helpers import (  # noqa: F401 - the fixtures celery_process, no_eager, _empty_queues
    celery_process_fixture,
    empty_queues_fixture,
    no_eager_fixture,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

VISIBILITY_S = 3  # CELERY_VISIBILITY_TIMEOUT_S of every worker here: an unacked message comes back after 3 s
CLAIM_TIMEOUT_S = 2
SUCCEEDED = re.compile(r"Task devices\.(\w+)\[([0-9a-f-]+)\] succeeded in [^:]+: (.*)$", re.MULTILINE)


def worker(name: str, queues: str = "ingest", concurrency: int = 1) -> tuple[str, ...]:
    # Mingle and gossip only slow the start down (a second each): these workers share no state.
    return (
        *("worker", "-Q", queues, "--concurrency", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO"),
        *("--without-mingle", "--without-gossip"),
    )


def heartbeats(count: int) -> list[dict]:
    return [{"id": str(uuid.uuid4()), "cpu_percent": 10.0 + n, "sent_at": "2026-11-23T11:00:00Z"} for n in range(count)]


def receive_metrics(device, beats: list[dict]) -> Package:
    """Store a metrics package as the upload endpoint does; its task is queued on commit."""
    archive = build(device, "metrics", [("metrics.jsonl", metrics_lines(*beats))], records=[b["id"] for b in beats])
    upload = uploads.Upload(uuid.UUID(archive.package_id), "metrics", archive.sha256)
    return uploads.receive_package(device, upload, io.BytesIO(archive.body)).package


def stored_ids(device) -> list[str]:
    return [str(client_id) for client_id in Telemetry.objects.filter(device=device).values_list("client_id", flat=True)]


def fresh(package: Package) -> Package:
    package.refresh_from_db()
    return package


def unacked_messages() -> dict[str, float]:
    """Task id -> time delivered, for messages a worker took but never acknowledged (kombu's
    Redis transport keeps them in the `unacked` hash, indexed by delivery time)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    delivered = {}
    for tag, at in client.zrange("unacked_index", 0, -1, withscores=True):
        message, _exchange, _routing_key = json.loads(client.hget("unacked", tag))
        delivered[message["headers"]["id"]] = at
    return delivered


def row_lock_is_free(package: Package) -> bool:
    try:
        with transaction.atomic():
            Package.objects.select_for_update(nowait=True).get(pk=package.pk)
        return True
    except DatabaseError:
        return False


def succeeded(*workers) -> list[tuple[str, str, str]]:
    """(task name, task id, return value) of every task the workers' logs report as done."""
    return [match for worker in workers for match in SUCCEEDED.findall(worker.output())]


def kill_mid_package(celery_process, package: Package, tmp_path) -> str:
    """Run a worker that stops inside ``package``'s transaction, check it wrote its rows there
    and nothing is committed, then SIGKILL it; return the task id it held the package with."""
    marker = tmp_path / "paused.json"
    paused = celery_process(
        *worker("paused"),
        DJANGO_SETTINGS_MODULE="tests.ingest_pause_settings",
        INGEST_PAUSE_MARKER=str(marker),
        CELERY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
    )
    wait_for(marker.exists, logs=[paused.log])
    seen = json.loads(marker.read_text())
    assert seen["package"] == package.pk and seen["in_transaction"], seen
    assert seen["telemetry_rows_seen_inside"] == seen["summary"]["stored"] > 0, seen
    assert stored_ids(package.device) == [], "rows of an open transaction must not be visible outside it"
    assert (fresh(package).status, package.attempts) == (PackageStatus.PROCESSING, 1)

    paused.kill()
    wait_for(lambda: row_lock_is_free(package), timeout=10)  # PostgreSQL rolled the dead transaction back
    assert fresh(package).status == PackageStatus.PROCESSING
    assert stored_ids(package.device) == []
    assert package.claim_token in unacked_messages(), "the dead worker's message is still unacknowledged"
    return package.claim_token


def test_a_worker_killed_inside_a_package_leaves_nothing_and_its_redelivered_task_processes_it_once(
    celery_process, no_eager, tmp_path
):
    device = make_device("cam-killed").device
    beats = heartbeats(20)
    package = receive_metrics(device, beats)
    token = kill_mid_package(celery_process, package, tmp_path)

    # A worker's Redis transport restores messages unacknowledged for longer than the visibility
    # timeout when it starts (then only every ~100 s): start the new one once the message is due.
    delivered_at = unacked_messages()[token]
    wait_for(lambda: time.time() - delivered_at > VISIBILITY_S + 0.5)
    restarted = celery_process(*worker("restarted"), CELERY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S))
    wait_for(lambda: succeeded(restarted), logs=[restarted.log])

    # The same message came back (same task id, so it could take over its own claim at once).
    assert succeeded(restarted) == [("process_package", token, "'processed'")], restarted.output()
    assert (fresh(package).status, package.attempts, package.error, package.claim_token) == ("processed", 2, "", "")
    assert package.summary == {"heartbeats": 20, "stored": 20}
    assert sorted(stored_ids(device)) == sorted(beat["id"] for beat in beats)
    assert unacked_messages() == {}


def test_a_package_whose_worker_and_message_are_both_lost_is_requeued_once_its_claim_times_out(
    celery_process, no_eager, tmp_path, settings
):
    settings.PACKAGE_CLAIM_TIMEOUT_S = CLAIM_TIMEOUT_S
    device = make_device("cam-orphaned").device
    package = receive_metrics(device, heartbeats(12))
    token = kill_mid_package(celery_process, package, tmp_path)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # the message dies too (broker restored from an old snapshot)
    assert processing.recover_packages(now=package.processing_started_at + timedelta(seconds=1)) == 0

    recovering = celery_process(*worker("recovering", "default,ingest"), PACKAGE_CLAIM_TIMEOUT_S=str(CLAIM_TIMEOUT_S))
    stale = package.processing_started_at + timedelta(seconds=CLAIM_TIMEOUT_S + 0.5)
    wait_for(lambda: timezone.now() > stale)
    recover_packages.delay()
    wait_for(lambda: len(succeeded(recovering)) == 2, logs=[recovering.log])

    done = {name: (task_id, value) for name, task_id, value in succeeded(recovering)}
    assert done["recover_packages"][1] == "1", recovering.output()  # it queued one package...
    assert done["process_package"][1] == "'processed'", recovering.output()  # ...which a new task processed
    assert done["process_package"][0] != token
    assert (fresh(package).status, package.attempts, package.error) == ("processed", 2, "")
    assert package.summary == {"heartbeats": 12, "stored": 12}
    assert len(stored_ids(device)) == 12


RACED, REPROCESSED = 30, 10


def overlapping_batches() -> list[list[dict]]:
    """Heartbeats of 30 packages from two devices. The first 10 (reprocessed later) hold their
    own; each later one repeats 2 of its device's previous package, as a client does when it
    re-sends records whose upload it never saw acknowledged."""
    batches = [heartbeats(4) for _ in range(RACED)]
    for n in range(REPROCESSED + 2, RACED):
        batches[n] = batches[n - 2][-2:] + batches[n]
    return batches


@contextmanager
def published_packages():
    """Task id -> package pk of every devices.process_package message this process sends."""
    published = {}

    def record(sender=None, headers=None, body=None, **kwargs):
        if sender == "devices.process_package":
            published[headers["id"]] = body[0][0]

    after_task_publish.connect(record, weak=False)
    try:
        yield published
    finally:
        after_task_publish.disconnect(record)


def test_two_workers_racing_for_every_package_store_each_heartbeat_exactly_once(celery_process, no_eager, tmp_path):
    racers = [celery_process(*worker(f"racer{n}", concurrency=2)) for n in (1, 2)]
    for racer in racers:
        racer.wait_until_ready()
    logs = [racer.log for racer in racers]
    devices = [make_device(f"cam-race-{n}").device for n in (1, 2)]
    batches, packages = overlapping_batches(), []
    with published_packages() as published:
        for n, beats in enumerate(batches):
            packages.append(receive_metrics(devices[n % 2], beats))  # first task, queued on commit
            process_package.delay(packages[-1].pk)  # a second task (another id) racing it for the claim
            if n == REPROCESSED - 1:
                first = Package.objects.filter(pk__in=[package.pk for package in packages])
                wait_for(lambda: first.filter(status=PackageStatus.PROCESSED).count() == REPROCESSED, logs=logs)
                assert processing.reprocess(first) == REPROCESSED  # a third task each, while the rest race
    assert len(published) == 2 * RACED + REPROCESSED
    wait_for(lambda: len(succeeded(*racers)) == len(published), logs=logs)

    for n, package in enumerate(map(fresh, packages)):
        assert (package.status, package.error) == (PackageStatus.PROCESSED, ""), package.error
        assert package.attempts == (2 if n < REPROCESSED else 1), (n, package.attempts)
        assert package.summary["heartbeats"] == len(batches[n])
        if n < REPROCESSED:
            assert package.summary["stored"] == 0  # the second run found all its heartbeats stored
    distinct = {(devices[n % 2].pk, beat["id"]) for n, beats in enumerate(batches) for beat in beats}
    stored = [(device, str(client_id)) for device, client_id in Telemetry.objects.values_list("device", "client_id")]
    assert len(distinct) == RACED * 4 and sorted(stored) == sorted(distinct)
    # Each heartbeat counted as stored by one package (the reprocessed ones' first counts are gone).
    assert sum(package.summary["stored"] for package in packages) == len(distinct) - REPROCESSED * 4

    # Who ran each package's tasks, and with what result: one 'processed' per round, the rest
    # skipped, and packages whose tasks ran on both workers (the race was real).
    runs = {package.pk: [] for package in packages}
    for racer in racers:
        for _name, task_id, value in succeeded(racer):
            runs[published[task_id]].append((racer.log.name, value))
    for n, package in enumerate(packages):
        rounds, tasks = (2, 3) if n < REPROCESSED else (1, 2)
        results = sorted(value for _racer, value in runs[package.pk])
        assert results == ["'processed'"] * rounds + ["'skipped'"] * (tasks - rounds), (n, runs[package.pk])
    processed_by = {racer for package_runs in runs.values() for racer, value in package_runs if value == "'processed'"}
    assert processed_by == {log.name for log in logs}, "both workers must have processed packages"
    assert any(len({racer for racer, _value in package_runs}) == 2 for package_runs in runs.values())
    for racer in racers:
        assert "Retry in" not in racer.output() and "raised" not in racer.output(), racer.output()
