"""System checks for configurations that run but are unsafe or broken in production."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


def _production_topology() -> bool:
    return not settings.EMBEDDED_BROKER or not settings.USES_SQLITE


@register(Tags.security, deploy=True)
def check_secret_key_source(app_configs, **kwargs):
    if _production_topology() and not settings.SECRET_KEY_FROM_ENV:
        return [
            Error(
                "SECRET_KEY is not set in the environment while running the production topology.",
                hint="Set SECRET_KEY (or SECRET_KEY_FILE) to the same random value on every web and worker node.",
                id="sphere.E001",
            )
        ]
    return []


@register()
def check_topology(app_configs, **kwargs):
    problems = []
    if not settings.EMBEDDED_BROKER and settings.USES_SQLITE:
        problems.append(
            Warning(
                "An external Celery broker is configured but the database is SQLite.",
                hint="Workers on other hosts cannot share a SQLite file; set DATABASE_URL to PostgreSQL.",
                id="sphere.W002",
            )
        )
    if not settings.EMBEDDED_BROKER and not settings.S3_BUCKET:
        problems.append(
            Warning(
                "An external Celery broker is configured but media are stored on the local disk.",
                hint="Workers on other hosts cannot read files uploaded to the web node; set S3_BUCKET.",
                id="sphere.W003",
            )
        )
    if settings.CELERY_TASK_ALWAYS_EAGER and _production_topology():
        problems.append(
            Warning(
                "CELERY_TASK_ALWAYS_EAGER is on in the production topology: tasks run inside web requests.",
                id="sphere.W004",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def check_debug_exposure(app_configs, **kwargs):
    exposed = [host for host in settings.ALLOWED_HOSTS if host not in {"127.0.0.1", "localhost", "[::1]", "testserver"}]
    if settings.DEBUG and exposed:
        return [
            Error(
                f"DEBUG is on while serving non-local hosts {exposed}: tracebacks would leak settings.",
                id="sphere.E005",
            )
        ]
    return []


@register()
def check_ingestion(app_configs, **kwargs):
    problems = []
    low, high = settings.UNCERTAIN_BAND
    if low > high:
        problems.append(
            Error(
                f"UNCERTAIN_BAND_LOW ({low}) is above UNCERTAIN_BAND_HIGH ({high}): no prediction would be routed.",
                id="sphere.E006",
            )
        )
    if settings.PACKAGE_CLAIM_TIMEOUT_S <= settings.CELERY_TASK_TIME_LIMIT:
        problems.append(
            Warning(
                f"PACKAGE_CLAIM_TIMEOUT_S ({settings.PACKAGE_CLAIM_TIMEOUT_S}) is not above CELERY_TASK_TIME_LIMIT "
                f"({settings.CELERY_TASK_TIME_LIMIT}): a live worker's package could be taken over.",
                id="sphere.W007",
            )
        )
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    if timeout is not None and timeout <= settings.CELERY_TASK_TIME_LIMIT:
        problems.append(
            Warning(
                f"CELERY_VISIBILITY_TIMEOUT_S ({timeout}) is not above CELERY_TASK_TIME_LIMIT "
                f"({settings.CELERY_TASK_TIME_LIMIT}): the broker would hand a running task to a second worker.",
                id="sphere.W008",
            )
        )
    return problems
