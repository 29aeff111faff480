"""Labeling work: periodic jobs and snapshot exports. Thin: each task calls one service and is safe
to run twice."""

from celery import shared_task

from labeling import export, services, sources


@shared_task(name="labeling.queue_uncertain_predictions", ignore_result=True)
def queue_uncertain_predictions(device_id: str, client_ids: list[str]) -> int:
    return sources.enqueue_uncertain(device_id, client_ids)


@shared_task(name="labeling.release_expired_leases", ignore_result=True)
def release_expired_leases() -> int:
    return services.release_expired_leases()


@shared_task(name="labeling.enqueue_quarantined", ignore_result=True)
def enqueue_quarantined() -> int:
    return sources.enqueue_quarantined()


@shared_task(name="labeling.sample_audit", ignore_result=True)
def sample_audit() -> int:
    return sources.sample_audit()


@shared_task(
    name="labeling.export_snapshot",
    queue="default",
    ignore_result=True,
    soft_time_limit=export.SOFT_TIME_LIMIT_S,
    time_limit=export.TIME_LIMIT_S,
)
def export_snapshot(snapshot_pk: int) -> str:
    return export.export_snapshot(snapshot_pk)
