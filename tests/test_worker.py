"""A real Celery worker and beat, as separate processes, on PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from conftest import heartbeat_body, make_device
from devices import services
from devices.models import DeviceStatus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def database_url_of_the_test_database() -> str:
    db = connection.settings_dict
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def celery_process(tmp_path):
    started = []

    def start(*args):
        env = {
            **os.environ,
            "DATABASE_URL": database_url_of_the_test_database(),
            "REDIS_URL": settings.REDIS_URL,
            "DATA_DIR": str(tmp_path),
        }
        log = open(tmp_path / f"celery-{len(started)}.log", "w+")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "sphere", *args], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        started.append((process, log))
        return process

    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def no_eager():
    from sphere.celery import app

    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = True


@pytest.fixture(autouse=True)
def _empty_queues():
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def wait_for(predicate, timeout=30.0, logs=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = "".join(log.read_text()[-3000:] for log in logs or [])
    pytest.fail(f"condition not met within {timeout}s\n{tail}")


def silent_device(name):
    device = make_device(name).device
    services.record_heartbeat(device, heartbeat_body(), now=timezone.now() - timedelta(hours=1))
    return device


def status_of(device):
    device.refresh_from_db()
    return device.status


def test_a_worker_process_consumes_an_enqueued_task_from_redis(celery_process, no_eager, tmp_path):
    from devices.tasks import sweep_device_status

    device = silent_device("cam-worker")
    celery_process("worker", "-Q", "default,ingest,training", "--pool", "solo", "-n", "t1@%h", "--loglevel", "INFO")
    sweep_device_status.delay()
    wait_for(lambda: status_of(device) == DeviceStatus.OFFLINE, logs=list(tmp_path.glob("*.log")))


def test_beat_schedules_from_the_database_drive_the_worker(celery_process, no_eager, tmp_path):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(task="devices.sweep_device_status").update(interval=every_second)
    device = silent_device("cam-beat")
    celery_process("worker", "-Q", "default", "--pool", "solo", "-n", "t2@%h")
    celery_process("beat", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "-s", str(tmp_path / "b"))
    wait_for(lambda: status_of(device) == DeviceStatus.OFFLINE, logs=list(tmp_path.glob("*.log")))


def test_a_task_enqueued_inside_a_transaction_waits_for_the_commit(no_eager):
    import redis
    from django.db import transaction

    from devices.tasks import sweep_device_status

    client = redis.Redis.from_url(settings.REDIS_URL)
    with transaction.atomic():
        sweep_device_status.delay_on_commit()
        assert client.llen("default") == 0
    assert client.llen("default") == 1
