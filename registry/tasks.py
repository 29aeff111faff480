"""Thin tasks: load by id, call a service. Each is safe to run twice."""

from __future__ import annotations

from celery import shared_task

# --- training -----------------------------------------------------------------------------------


@shared_task(name="registry.run_training_job", bind=True, ignore_result=True, acks_late=True)
def run_training_job(self, job_pk: int) -> str:
    """Routed to the `training` queue (CELERY_TASK_ROUTES): slow work never delays ingestion."""
    from registry import jobs

    return jobs.run_job(job_pk, claim=self.request.id or f"inline-{job_pk}")


@shared_task(name="registry.check_policies", ignore_result=True)
def check_policies() -> dict:
    from registry import policies

    return policies.check_all()


@shared_task(name="registry.fail_stale_jobs", ignore_result=True)
def fail_stale_jobs() -> dict:
    from registry import jobs

    return jobs.fail_stale_jobs()


@shared_task(name="registry.mirror_aliases", ignore_result=True)
def mirror_aliases(family_pk: int) -> bool:
    from registry import tracking
    from registry.models import ModelFamily

    family = ModelFamily.objects.filter(pk=family_pk).first()
    return bool(family and tracking.mirror_aliases(family))


# --- rollouts -----------------------------------------------------------------------------------


@shared_task(name="registry.tick_rollouts", ignore_result=True)
def tick_rollouts() -> dict:
    """Every 30 s (registry.schedules): timeouts, joiners and gates of every rollout that needs it.
    Safe to run twice: each rollout is ticked under its row lock, on the state it finds."""
    from registry import rollouts

    return rollouts.tick_all()


@shared_task(name="registry.tick_rollout", ignore_result=True)
def tick_rollout(rollout_pk: int) -> str:
    from registry import rollouts
    from registry.models import Rollout

    rollout = Rollout.objects.filter(pk=rollout_pk).first()
    return rollouts.tick(rollout) if rollout is not None else "gone"
