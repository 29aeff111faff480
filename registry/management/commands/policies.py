"""``manage.py policies list|show|run|pause|resume``: the retraining policies' admin actions for scripts.

    manage.py policies list
    manage.py policies run "digits nightly" --wait
    manage.py policies pause 3

A policy is given by id or by name. Exit codes: 0 done, 1 refused (the reason on stderr: a job
already queued or running, an open circuit breaker) or, with ``--wait``, a job that failed, was
cancelled or did not finish in time; 2 usage error (unknown policy, bad arguments).
"""

from __future__ import annotations

import time

from registry.management.commands._base import (
    SubcommandCommand,
    add_by_argument,
    find_user,
    refused,
    table,
    usage,
    when,
)
from registry.models import ACTIVE_JOB_STATUSES, JobStatus, RetrainingPolicy, TrainingJob

SUCCEEDED = (JobStatus.PROMOTED, JobStatus.ARCHIVED)


def find_policy(ref: str) -> RetrainingPolicy:
    policies = RetrainingPolicy.objects.select_related("family")
    found = policies.filter(pk=int(ref)).first() if ref.isdigit() else policies.filter(name=ref).first()
    if found is None:
        raise usage(f"No retraining policy {ref!r} (give its id or its name; `policies list` shows them).")
    return found


def sleep(seconds: float) -> None:
    time.sleep(seconds)


class Command(SubcommandCommand):
    help = "List, inspect, run, pause and resume retraining policies."
    subcommands = {
        "list": "List the policies with their state.",
        "show": "Show one policy and what it would decide now.",
        "run": "Start a training job now (as the admin's 'run now').",
        "pause": "Stop the policy from triggering.",
        "resume": "Let the policy trigger again (closes an open circuit breaker).",
    }

    def add_list_arguments(self, parser):
        parser.add_argument("--family", help="Only the policies of this model family.")

    def add_show_arguments(self, parser):
        parser.add_argument("policy", help="Id or name.")

    def add_run_arguments(self, parser):
        parser.add_argument("policy", help="Id or name.")
        parser.add_argument("--reason", default="", help="Recorded as the job's evidence.")
        parser.add_argument(
            "--wait", action="store_true", help="Wait for the job to finish; exit 1 unless it succeeds."
        )
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most (default 3600).")
        parser.add_argument("--poll", type=float, default=2.0, help="Seconds between checks (default 2).")
        add_by_argument(parser)

    def add_pause_arguments(self, parser):
        parser.add_argument("policy", help="Id or name.")

    def add_resume_arguments(self, parser):
        parser.add_argument("policy", help="Id or name.")

    def do_list(self, *, family=None, **options):
        policies = RetrainingPolicy.objects.select_related("family").order_by("family__name", "name")
        if family:
            policies = policies.filter(family__name=family)
        active = dict(
            TrainingJob.objects.filter(status__in=ACTIVE_JOB_STATUSES, policy__in=policies).values_list("policy", "pk")
        )
        rows = [
            [
                policy.pk,
                policy.name,
                policy.family.name,
                "enabled" if policy.enabled else "paused",
                _breaker(policy),
                when(policy.last_job_at),
                f"job {active[policy.pk]}" if policy.pk in active else None,
            ]
            for policy in policies
        ]
        if not rows:
            self.say("No retraining policies.")
            return
        self.say(table(rows, ["id", "name", "family", "state", "breaker", "last job", "active job"]))

    def do_show(self, *, policy, **options):
        from registry.policies import evaluate_policy

        found = find_policy(policy)
        decision = evaluate_policy(found)
        self.say(f"Policy {found.pk} {found.name!r} of {found.family.name}: {'enabled' if found.enabled else 'paused'}")
        self.say(f"  breaker: {_breaker(found)}; last job: {when(found.last_job_at) or 'never'}")
        verdict = f"would start a job ({decision.trigger})" if decision.trigger else "would not start a job"
        self.say(f"  now: {verdict}: {decision.reason}")

    def do_run(self, *, policy, reason, wait, timeout, poll, by=None, **options):
        from registry.policies import PolicyBusy, run_policy

        found, user = find_policy(policy), find_user(by)
        try:
            job = run_policy(found, by=user, reason=reason or "started from the command line")
        except PolicyBusy as exc:
            raise refused(exc)
        self.say(f"Started job {job.pk} of policy {found.name!r} ({found.family.name}): {job.status}.")
        if wait:
            self._wait(job, timeout, poll)

    def _wait(self, job: TrainingJob, timeout: float, poll: float) -> None:
        deadline, stage = time.monotonic() + timeout, None
        job.refresh_from_db()
        while job.status in ACTIVE_JOB_STATUSES:
            if time.monotonic() >= deadline:
                raise refused(
                    f"Job {job.pk} is still {job.status} after {timeout:g} s ({job.progress:.0%} {job.stage})."
                )
            if job.stage and job.stage != stage:
                stage = job.stage
                self.say(f"  {job.progress:4.0%}  {stage}")
            sleep(poll)
            job.refresh_from_db()
        outcome = f"Job {job.pk} {job.get_status_display().lower()}: {job.reason or job.error or '-'}"
        if job.status not in SUCCEEDED:
            raise refused(outcome + (f" ({job.error})" if job.error and job.reason else ""))
        self.say(outcome)

    def do_pause(self, *, policy, **options):
        self._set_enabled(find_policy(policy), False)

    def do_resume(self, *, policy, **options):
        self._set_enabled(find_policy(policy), True)

    def _set_enabled(self, policy: RetrainingPolicy, enabled: bool) -> None:
        from registry.policies import set_enabled

        set_enabled(policy, enabled)
        self.say(f"Policy {policy.pk} {policy.name!r}: {'enabled' if enabled else 'paused'}.")


def _breaker(policy: RetrainingPolicy) -> str:
    from django.utils import timezone

    if policy.breaker_open_until and policy.breaker_open_until > timezone.now():
        return f"open until {when(policy.breaker_open_until)}"
    return f"closed ({policy.consecutive_failures} failure(s) in a row)" if policy.consecutive_failures else "closed"
