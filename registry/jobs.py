"""A training job's life: queued → running → promoted | archived | failed.

``start_job`` saves the job and enqueues ``registry.run_training_job`` on the ``training`` queue
after commit. The task claims the job with a conditional UPDATE (a duplicate or redelivered
message finds it taken), freezes a dataset snapshot, trains against the current champion
(registry.training), registers the candidate as a version (lineage: snapshot, parent, job,
policy, incidents), logs it to MLflow, and either points ``challenger`` at it or archives it with
the reason. Progress is written to the row and published live. A failure counts toward the
policy's circuit breaker; a job whose worker died is failed by ``fail_stale_jobs``, and a queued
job whose message was lost is enqueued again.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

import edge_client
from registry import versions
from registry.bundles import build_bundle
from registry.models import (
    CHALLENGER,
    CHAMPION,
    ModelFamily,
    RetrainingPolicy,
    TrainingJob,
)
from registry.models import JobStatus as S
from registry.policies import PolicyBusy
from sphere.live import publish

log = logging.getLogger(__name__)

# What a device needs beyond the model's own arrays: the client, numpy and the extractor.
CLIENT_BASE_MEMORY_MB = 64


def start_job(
    family: ModelFamily,
    *,
    policy: RetrainingPolicy | None = None,
    trigger: str,
    evidence: dict | None = None,
    incident_ids=(),
    by=None,
) -> TrainingJob:
    from registry import tasks

    now = timezone.now()
    try:
        with transaction.atomic():
            if policy is not None:
                # The policy's row lock orders concurrent starters; the partial unique index
                # is the last word if two slip through on another path.
                RetrainingPolicy.objects.select_for_update().get(pk=policy.pk)
                if TrainingJob.objects.filter(policy=policy, status__in=[S.QUEUED, S.RUNNING]).exists():
                    raise PolicyBusy(f"{policy.name}: a job is already queued or running")
                RetrainingPolicy.objects.filter(pk=policy.pk).update(last_job_at=now)
            job = TrainingJob.objects.create(
                family=family, policy=policy, trigger=trigger, evidence=evidence or {}, requested_by=by
            )
            if incident_ids:
                job.incidents.set(incident_ids)
            tasks.run_training_job.delay_on_commit(job.pk)
            _publish(job)
    except IntegrityError:
        raise PolicyBusy(f"{policy.name if policy else family.name}: a job is already queued or running") from None
    return job


def run_job(job_pk: int, claim: str) -> str:
    """Run the job if this caller claims it; returns the job's status (or 'skipped')."""
    if not _claim(job_pk, claim):
        return "skipped"
    job = TrainingJob.objects.select_related("family__class_set", "policy").get(pk=job_pk)
    try:
        _train(job)
    except Exception as exc:
        log.exception("training job %s failed", job.pk)
        fail(job, f"{type(exc).__name__}: {exc}")
    return job.status


def _claim(job_pk: int, claim: str) -> bool:
    now = timezone.now()
    # A redelivered message (its worker died mid-job: acks_late) carries the same task id and
    # takes its job up again from the start; any other duplicate finds the job taken.
    mine = Q(status=S.QUEUED) | Q(status=S.RUNNING, claim=claim)
    claimed = TrainingJob.objects.filter(mine, pk=job_pk).update(
        status=S.RUNNING, claim=claim, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1
    )
    return bool(claimed)


def _train(job: TrainingJob) -> None:
    from labeling.snapshots import create_snapshot
    from registry import tracking, training

    family = job.family
    progress(job, 0.02, "freezing the dataset snapshot")
    snapshot = create_snapshot(family.class_set, note=f"training job {job.pk} ({job.trigger})")
    TrainingJob.objects.filter(pk=job.pk).update(snapshot=snapshot)
    job.snapshot = snapshot
    champion = versions.alias_version(family, CHAMPION) or versions.ensure_shipped_version(family)
    TrainingJob.objects.filter(pk=job.pk).update(base_version=champion)
    loaded = versions.load_model(champion) if champion else None
    settings_ = training.TrainingSettings.from_policy(job.policy)
    TrainingJob.objects.filter(pk=job.pk).update(params=_settings_dict(settings_))
    result = training.train(
        snapshot, champion=loaded, settings=settings_, progress=lambda f, stage: progress(job, 0.05 + 0.85 * f, stage)
    )
    progress(job, 0.92, "registering the version")
    version, built = _register(job, result, champion)
    run_id = tracking.log_training(job, result, bundle_bytes=built.data, version=version)
    if run_id:
        type(version).objects.filter(pk=version.pk).update(mlflow_run_id=run_id)
    _decide(job, version, result)
    mlflow_version = tracking.register(version, run_id) if run_id else ""
    if mlflow_version:
        type(version).objects.filter(pk=version.pk).update(mlflow_model_version=mlflow_version)
    tracking.mirror_aliases(family)
    _finish(job, result, run_id)


def _register(job: TrainingJob, result, champion):
    family = job.family
    with transaction.atomic():
        ModelFamily.objects.select_for_update().get(pk=family.pk)
        number = versions.next_number(family)
        built = build_bundle(
            label=f"{family.name}@{number}",
            classes=result.classes,
            transform=result.transform,
            knn=result.knn,
            feature_dim=result.feature_dim,
            extra={"trained_by_job": job.pk, "snapshot": job.snapshot.content_hash if job.snapshot else ""},
        )
        version = versions.register_version(
            family,
            built,
            number=number,
            feature_dim=result.feature_dim,
            metrics=result.metrics,
            params=result.params,
            parent=champion,
            snapshot=job.snapshot,
            training_job=job,
            policy=job.policy,
            incidents=list(job.incidents.all()),
            min_memory_mb=required_memory_mb(result),
            runtime={"client": edge_client.__version__},
        )
    return version, built


def required_memory_mb(result) -> int:
    """The model's arrays in float64 plus the client's own footprint, rounded up."""
    reference_bytes = result.knn.size * max(result.knn.dim or 0, 1) * 8 * 2
    return CLIENT_BASE_MEMORY_MB + math.ceil(reference_bytes / 2**20)


def _decide(job: TrainingJob, version, result) -> None:
    if result.promote:
        versions.move_alias(job.family, CHALLENGER, version, reason=f"training job {job.pk}: {result.reason}")
        job.status = S.PROMOTED
    else:
        versions.archive_version(version, result.reason)
        job.status = S.ARCHIVED


def _finish(job: TrainingJob, result, run_id: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        TrainingJob.objects.filter(pk=job.pk).update(
            status=job.status,
            result=result.metrics,
            reason=result.reason,
            progress=1.0,
            stage="done",
            finished_at=now,
            heartbeat_at=now,
            mlflow_run_id=run_id,
        )
        if job.policy_id:
            RetrainingPolicy.objects.filter(pk=job.policy_id).update(consecutive_failures=0, breaker_open_until=None)
        job.refresh_from_db()
        _publish(job)


def fail(job: TrainingJob, error: str) -> None:
    """Fail the job (if still active) and count it toward its policy's circuit breaker."""
    now = timezone.now()
    with transaction.atomic():
        failed = TrainingJob.objects.filter(pk=job.pk, status__in=[S.QUEUED, S.RUNNING]).update(
            status=S.FAILED, error=error[:5000], reason="failed", finished_at=now, heartbeat_at=now
        )
        if failed and job.policy_id:
            _count_failure(job.policy_id, now)
        job.refresh_from_db()
        _publish(job)


def _count_failure(policy_pk: int, now) -> None:
    policy = RetrainingPolicy.objects.select_for_update().get(pk=policy_pk)
    policy.consecutive_failures += 1
    fields = ["consecutive_failures"]
    if policy.consecutive_failures >= policy.max_failures:
        policy.breaker_open_until = now + timedelta(minutes=policy.breaker_minutes)
        fields.append("breaker_open_until")
        log.warning("policy %s: circuit breaker open until %s", policy.name, policy.breaker_open_until)
    policy.save(update_fields=fields)


def cancel(job: TrainingJob, *, reason: str = "cancelled by an operator") -> bool:
    """A queued job only: a running one finishes or fails on its own."""
    cancelled = TrainingJob.objects.filter(pk=job.pk, status=S.QUEUED).update(
        status=S.CANCELLED, reason=reason, finished_at=timezone.now()
    )
    job.refresh_from_db()
    if cancelled:
        _publish(job)
    return bool(cancelled)


def progress(job: TrainingJob, fraction: float, stage: str) -> None:
    job.progress, job.stage = round(min(max(fraction, 0.0), 1.0), 3), stage[:80]
    TrainingJob.objects.filter(pk=job.pk).update(progress=job.progress, stage=job.stage, heartbeat_at=timezone.now())
    publish("registry", "training.job", job_summary(job))  # this moment's numbers, not the row's later ones


def fail_stale_jobs(now=None) -> dict[str, int]:
    """Running jobs without progress for TRAINING_STALE_MINUTES are failed (their worker is
    gone); queued jobs older than that are enqueued again (their message was lost)."""
    from registry import tasks

    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.TRAINING_STALE_MINUTES)
    failed = 0
    for job in TrainingJob.objects.filter(status=S.RUNNING, heartbeat_at__lt=cutoff):
        fail(job, f"no progress for {settings.TRAINING_STALE_MINUTES} min: the worker was lost")
        failed += 1
    requeued = 0
    for pk in TrainingJob.objects.filter(status=S.QUEUED, created__lt=cutoff).values_list("pk", flat=True):
        tasks.run_training_job.delay(pk)
        requeued += 1
    return {"failed": failed, "requeued": requeued}


def _settings_dict(settings_) -> dict:
    from dataclasses import asdict

    return asdict(settings_)


def job_summary(job: TrainingJob) -> dict:
    return {
        "id": job.pk,
        "family": job.family.name,
        "policy": job.policy.name if job.policy_id else None,
        "status": job.status,
        "trigger": job.trigger,
        "progress": job.progress,
        "stage": job.stage,
        "reason": job.reason,
        "error": job.error[:500],
        "version": _produced_label(job),
        "created": job.created,
        "finished_at": job.finished_at,
    }


def _produced_label(job: TrainingJob) -> str | None:
    version = getattr(job, "produced_version", None)
    return version.label if version is not None else None


def _publish(job: TrainingJob) -> None:
    publish(
        "registry",
        "training.job",
        lambda: job_summary(TrainingJob.objects.select_related("family", "policy").get(pk=job.pk)),
    )
