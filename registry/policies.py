"""When to retrain: a policy's triggers, its cooldown and its circuit breaker.

A policy triggers when

- drift: a drift event of the family was confirmed, or a drift report on the family's versions
  found a share of drifted features at or above ``drift_share_threshold``, since the last job
  — AND at least ``min_new_labels`` counting labels arrived since then; or
- schedule: ``schedule_hours`` have passed since the last job and at least one label arrived; or
- manual: an operator asks (``run_policy``), which skips the label and drift conditions but not
  the one-job-at-a-time rule or an open breaker.

Never: while disabled, while a job of the policy is queued or running, within ``cooldown_minutes``
of the last job, or while the breaker is open (``max_failures`` failures in a row open it for
``breaker_minutes``). A drift event belongs to a family when its model_version is ``name@N``; the
devices still on the shipped reference report an empty version, counted for the family whose
version 1 is that reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from registry.models import ACTIVE_JOB_STATUSES, RetrainingPolicy, TrainingJob

DRIFT, DRIFT_SHARE, SCHEDULE, MANUAL = "drift", "drift_share", "schedule", "manual"


class PolicyBusy(Exception):
    """The policy cannot start a job now; the message says why."""


@dataclass(frozen=True)
class Decision:
    trigger: str | None  # None: do not run
    reason: str
    evidence: dict = field(default_factory=dict)
    incident_ids: tuple[int, ...] = ()


def evaluate_policy(policy: RetrainingPolicy, now: datetime | None = None) -> Decision:
    now = now or timezone.now()
    blocked = _blocked(policy, now)
    if blocked:
        return Decision(None, blocked)
    since = policy.last_job_at or policy.created
    labels = new_label_count(policy, since)
    evidence = {"since": since.isoformat(), "new_labels": labels, "min_new_labels": policy.min_new_labels}
    drift = _drift_trigger(policy, since)
    if drift is not None and labels >= policy.min_new_labels:
        trigger, details, incidents = drift
        return Decision(trigger, f"{details}; {labels} new labels", {**evidence, "drift": details}, incidents)
    if _schedule_due(policy, now) and labels > 0:
        return Decision(SCHEDULE, f"every {policy.schedule_hours} h; {labels} new labels", evidence)
    if drift is not None:
        return Decision(None, f"{drift[1]}, but only {labels} of {policy.min_new_labels} new labels", evidence)
    return Decision(None, "no drift confirmed and no report over the threshold since the last job", evidence)


def blocked_reason(policy: RetrainingPolicy, now: datetime | None = None, *, manual: bool = False) -> str:
    """Why the policy may not start a job now ('' if it may)."""
    return _blocked(policy, now or timezone.now(), manual=manual)


def _blocked(policy: RetrainingPolicy, now: datetime, *, manual: bool = False) -> str:
    if not policy.enabled and not manual:
        return "policy is disabled"
    if policy.breaker_open_until and policy.breaker_open_until > now:
        return (
            f"circuit breaker open until {policy.breaker_open_until:%Y-%m-%d %H:%M} UTC after "
            f"{policy.consecutive_failures} failed jobs in a row"
        )
    active = TrainingJob.objects.filter(policy=policy, status__in=ACTIVE_JOB_STATUSES).first()
    if active is not None:
        return f"job {active.pk} is {active.status}"
    if not manual and policy.last_job_at and now < policy.last_job_at + timedelta(minutes=policy.cooldown_minutes):
        ready = policy.last_job_at + timedelta(minutes=policy.cooldown_minutes)
        return f"cooling down until {ready:%Y-%m-%d %H:%M} UTC"
    return ""


def new_label_count(policy: RetrainingPolicy, since: datetime) -> int:
    from labeling.snapshots import counting_labels

    class_set = policy.family.class_set
    return counting_labels(class_set).filter(task__class_set=class_set, task__gold_label="", created__gt=since).count()


def family_version_filter(family, field_name: str = "model_version") -> Q:
    """Rows (drift events, predictions) whose model version belongs to ``family``."""
    condition = Q(**{f"{field_name}__startswith": f"{family.name}@"})
    if family.versions.filter(number=1, source="shipped").exists() or family.name == "digits":
        condition |= Q(**{field_name: ""})
    return condition


def _drift_trigger(policy: RetrainingPolicy, since: datetime):
    """(trigger, description, incident ids) of the newest drift evidence since ``since``, or None."""
    from drift.models import DriftEvent, DriftReport, DriftStatus

    family = policy.family
    if policy.on_confirmed_drift:
        confirmed = DriftEvent.objects.filter(
            family_version_filter(family), status=DriftStatus.CONFIRMED, decided_at__gt=since
        )
        count = confirmed.count()
        if count:
            incidents = tuple(sorted(set(confirmed.exclude(incident=None).values_list("incident_id", flat=True)[:100])))
            return DRIFT, f"{count} drift event(s) confirmed", incidents
    if policy.drift_share_threshold is not None:
        report = (
            DriftReport.objects.filter(
                finished_at__gt=since, share_of_drifted_features__gte=policy.drift_share_threshold
            )
            .filter(_report_of_family(family))
            .order_by("-share_of_drifted_features")
            .first()
        )
        if report is not None:
            share = report.share_of_drifted_features
            return DRIFT_SHARE, f"report {report.pk}: {share:.0%} of features drifted", ()
    return None


def _report_of_family(family) -> Q:
    # Reports over the whole fleet, a group or a device cover whatever runs there; reports
    # scoped to a model version count only for that version's family.
    return ~Q(scope="model_version") | Q(scope_value__startswith=f"{family.name}@")


def _schedule_due(policy: RetrainingPolicy, now: datetime) -> bool:
    if not policy.schedule_hours:
        return False
    last = policy.last_job_at or policy.created
    return now >= last + timedelta(hours=policy.schedule_hours)


# --- running --------------------------------------------------------------------------------------


def check_policy(policy: RetrainingPolicy, now: datetime | None = None) -> TrainingJob | None:
    """Evaluate one policy and start its job if it triggers (the beat calls this)."""
    from registry import jobs

    now = now or timezone.now()
    decision = evaluate_policy(policy, now)
    RetrainingPolicy.objects.filter(pk=policy.pk).update(last_checked_at=now)
    if decision.trigger is None:
        return None
    try:
        return jobs.start_job(
            policy.family,
            policy=policy,
            trigger=decision.trigger,
            evidence={"reason": decision.reason, **decision.evidence},
            incident_ids=decision.incident_ids,
        )
    except PolicyBusy:
        return None  # another process started one meanwhile


def check_all(now: datetime | None = None) -> dict[str, int]:
    started = 0
    policies = RetrainingPolicy.objects.filter(enabled=True).select_related("family__class_set")
    for policy in policies:
        started += check_policy(policy, now) is not None
    return {"policies": len(policies), "started": started}


def run_policy(policy: RetrainingPolicy, *, by=None, reason: str = "") -> TrainingJob:
    """Start a job by hand (admin action, API, management command). Raises PolicyBusy."""
    from registry import jobs

    blocked = blocked_reason(policy, manual=True)
    if blocked:
        raise PolicyBusy(f"{policy.name}: {blocked}")
    return jobs.start_job(
        policy.family, policy=policy, trigger=MANUAL, evidence={"reason": reason or "started by hand"}, by=by
    )


def set_enabled(policy: RetrainingPolicy, enabled: bool) -> RetrainingPolicy:
    """Pause (False) or resume (True) a policy. Resuming also closes an open breaker."""
    policy.enabled = enabled
    fields = ["enabled"]
    if enabled and policy.breaker_open_until:
        policy.breaker_open_until, policy.consecutive_failures = None, 0
        fields += ["breaker_open_until", "consecutive_failures"]
    policy.save(update_fields=fields)
    return policy
