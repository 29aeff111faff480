"""The drift app's periodic tasks, created after migrations like the fleet's (devices.schedules)."""

from django.conf import settings

from devices import schedules


def default_schedules() -> dict[str, tuple[str, int]]:
    return {
        "drift: group events into incidents": ("drift.triage_incidents", settings.DRIFT_TRIAGE_S),
        "drift: run the report policies that are due": ("drift.run_due_reports", 60),
        "drift: evaluate the alert rules": ("drift.evaluate_alerts", settings.ALERTS_EVALUATE_S),
    }


def install_default_schedules(**kwargs) -> None:
    schedules.install(default_schedules())
