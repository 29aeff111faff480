"""The fleet's periodic tasks, created in django-celery-beat's tables after migrations.

Operators can then change their intervals or disable them in the admin; existing rows are
never overwritten.
"""

from django.conf import settings


def default_schedules() -> dict[str, tuple[str, int]]:
    return {
        "fleet: mark late and offline devices": ("devices.sweep_device_status", settings.DEVICE_STATUS_SWEEP_S),
        "fleet: prune old telemetry": ("devices.prune_telemetry", 3600),
        "ingest: requeue packages whose task was lost": ("devices.recover_packages", 300),
        "ingest: prune old prediction logs": ("devices.prune_predictions", 3600),
        "health: refit telemetry baselines": ("devices.fit_telemetry_baselines", 3600),
        "health: check telemetry against baselines": ("devices.check_telemetry_anomalies", 60),
    }


def install_default_schedules(**kwargs) -> None:
    install(default_schedules())


def install(schedules: dict[str, tuple[str, int]]) -> None:
    """Create the named periodic tasks that do not exist yet (other apps call this too)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, seconds) in schedules.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
