"""The drift app's periodic tasks, created after migrations like the fleet's (devices.schedules)."""

from django.conf import settings

from devices import schedules


def default_schedules() -> dict[str, tuple[str, int]]:
    return {"drift: group events into incidents": ("drift.triage_incidents", settings.DRIFT_TRIAGE_S)}


def install_default_schedules(**kwargs) -> None:
    schedules.install(default_schedules())
