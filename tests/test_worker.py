"""A real Celery worker and beat, as separate processes, on PostgreSQL and Redis."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from conftest import heartbeat_body, make_device
from devices import services
from devices.models import DeviceStatus
from tests.celery_helpers import (  # noqa: F401 - the fixtures celery_process, no_eager, _empty_queues
    celery_process_fixture,
    empty_queues_fixture,
    no_eager_fixture,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


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
