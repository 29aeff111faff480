"""Telemetry retention: old rows go in bounded batches; recent rows stay."""

from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import heartbeat_body
from devices import services
from devices.models import Telemetry

pytestmark = pytest.mark.django_db


def test_it_prunes_old_telemetry_in_batches_and_keeps_recent_rows(device_a, settings):
    settings.TELEMETRY_RETENTION_DAYS = 7
    settings.TELEMETRY_PRUNE_BATCH = 3
    now = timezone.now()
    for age_days in [30, 20, 10, 8, 8, 6, 1, 0]:
        services.record_heartbeat(device_a.device, heartbeat_body(), now=now - timedelta(days=age_days))
    assert services.prune_telemetry(now) == 5
    ages = sorted((now - row.received_at).days for row in Telemetry.objects.all())
    assert ages == [0, 1, 6]


def test_it_stops_after_the_batch_budget_and_finishes_on_the_next_run(device_a, settings):
    settings.TELEMETRY_RETENTION_DAYS = 1
    settings.TELEMETRY_PRUNE_BATCH = 2
    settings.TELEMETRY_PRUNE_MAX_BATCHES = 2
    now = timezone.now()
    for _ in range(6):
        services.record_heartbeat(device_a.device, heartbeat_body(), now=now - timedelta(days=3))
    assert services.prune_telemetry(now) == 4
    assert services.prune_telemetry(now) == 2
    assert not Telemetry.objects.exists()


def test_the_retention_task_is_scheduled_in_the_database(db):
    from django_celery_beat.models import PeriodicTask

    tasks = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {"devices.prune_telemetry", "devices.sweep_device_status"} <= tasks


def test_it_prunes_prediction_logs_received_before_the_retention_age_oldest_first(api, device_a, settings):
    from devices.models import PredictionLog
    from devices.tests.test_predictions import post, record

    settings.PREDICTION_RETENTION_DAYS = 7
    settings.PREDICTION_PRUNE_BATCH = 2
    now = timezone.now()
    post(api, device_a, [record() for _ in range(5)])
    ids = list(PredictionLog.objects.order_by("pk").values_list("pk", flat=True))
    for pk, age_days in zip(ids, [30, 20, 8, 6, 0], strict=True):
        PredictionLog.objects.filter(pk=pk).update(received_at=now - timedelta(days=age_days))
    assert services.prune_predictions(now) == 3
    assert list(PredictionLog.objects.order_by("pk").values_list("pk", flat=True)) == ids[3:]
    assert services.prune_predictions(now) == 0


def test_prediction_pruning_is_scheduled(db):
    from django_celery_beat.models import PeriodicTask

    assert PeriodicTask.objects.filter(task="devices.prune_predictions").exists()
