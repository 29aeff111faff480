"""Periodic fleet work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from devices import services


@shared_task(name="devices.sweep_device_status", ignore_result=True)
def sweep_device_status() -> dict:
    return services.sweep_device_status()


@shared_task(name="devices.prune_telemetry", ignore_result=True)
def prune_telemetry() -> int:
    return services.prune_telemetry()
