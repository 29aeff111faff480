"""Labeling work: periodic jobs, live counts, snapshots and their exports. Thin: each task loads
by id and calls one service, and is safe to run twice."""

from celery import shared_task

from labeling import export, queue, services, snapshots, sources
from labeling.models import ClassSet

# A snapshot is one transaction over every counting label: 17 s at 100,000 labels (README).
SNAPSHOT_SOFT_TIME_LIMIT_S = 3600
SNAPSHOT_TIME_LIMIT_S = SNAPSHOT_SOFT_TIME_LIMIT_S + 300


def _may_retry(task) -> bool:
    # An eager task runs inside the request that enqueued it (tests; the embedded topology with
    # CELERY_TASK_ALWAYS_EAGER): no retrying there, the error is recorded at once.
    return not task.request.is_eager and task.request.retries < task.max_retries


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


@shared_task(name="labeling.publish_counts", queue="default", ignore_result=True)
def publish_counts() -> dict:
    return services.publish_queue_counts()


@shared_task(name="labeling.recompute_priorities", queue="default", ignore_result=True)
def recompute_priorities(class_set_id: int) -> int:
    class_set = ClassSet.objects.filter(pk=class_set_id).first()
    return 0 if class_set is None else queue.recompute_priorities(class_set)


@shared_task(
    bind=True,
    name="labeling.create_snapshot",
    queue="default",
    ignore_result=True,
    autoretry_for=snapshots.TRANSIENT_DB_ERRORS,
    max_retries=3,
    retry_backoff=10,
    retry_backoff_max=300,
    soft_time_limit=SNAPSHOT_SOFT_TIME_LIMIT_S,
    time_limit=SNAPSHOT_TIME_LIMIT_S,
)
def create_snapshot(self, request_pk: int) -> str:
    return snapshots.build_requested(request_pk, may_retry=_may_retry(self))


@shared_task(
    bind=True,
    name="labeling.export_snapshot",
    queue="default",
    ignore_result=True,
    autoretry_for=(export.RetryLater,),
    max_retries=export.MAX_RETRIES,
    retry_backoff=export.RETRY_BACKOFF_S,
    retry_backoff_max=export.RETRY_BACKOFF_MAX_S,
    soft_time_limit=export.SOFT_TIME_LIMIT_S,
    time_limit=export.TIME_LIMIT_S,
)
def export_snapshot(self, snapshot_pk: int) -> str:
    return export.export_snapshot(snapshot_pk, may_retry=_may_retry(self))


@shared_task(
    bind=True,
    name="labeling.delete_export",
    queue="default",
    ignore_result=True,
    autoretry_for=(export.RetryLater,),
    max_retries=export.MAX_RETRIES,
    retry_backoff=export.RETRY_BACKOFF_S,
    retry_backoff_max=export.RETRY_BACKOFF_MAX_S,
)
def delete_export(self, key: str, class_set_id: int, version: int) -> bool:
    return export.delete_archive(key, class_set_id, version, may_retry=_may_retry(self))


@shared_task(name="labeling.recover_snapshot_work", ignore_result=True)
def recover_snapshot_work() -> dict:
    return {"exports": export.recover_exports(), "snapshot_requests": snapshots.recover_requests()}
