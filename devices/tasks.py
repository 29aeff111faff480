"""Periodic fleet work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from devices import health, services
from devices.ingest import processing


@shared_task(name="devices.sweep_device_status", ignore_result=True)
def sweep_device_status() -> dict:
    return services.sweep_device_status()


@shared_task(name="devices.prune_telemetry", ignore_result=True)
def prune_telemetry() -> int:
    return services.prune_telemetry()


@shared_task(name="devices.fit_telemetry_baselines", ignore_result=True)
def fit_telemetry_baselines() -> int:
    return health.fit_baselines()


@shared_task(name="devices.check_telemetry_anomalies", ignore_result=True)
def check_telemetry_anomalies() -> int:
    return health.check_devices()


@shared_task(name="devices.prune_predictions", ignore_result=True)
def prune_predictions() -> int:
    return services.prune_predictions()


@shared_task(bind=True, name="devices.process_package", ignore_result=True, max_retries=8)
def process_package(self, package_pk: int) -> str:
    # The task id is the claim token: a redelivery of this same message (and its retries,
    # which keep the id) may take over a package a killed predecessor left half-done.
    token = self.request.id or "eager"
    try:
        return processing.process_package(package_pk, token)
    except processing.TRANSIENT_ERRORS as exc:
        if self.request.retries >= self.max_retries:
            return processing.give_up(package_pk, token, exc, attempts=self.request.retries + 1)
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc


@shared_task(name="devices.recover_packages", ignore_result=True)
def recover_packages() -> int:
    return processing.recover_packages()
