"""Retraining policies: when they trigger and when they must not; cooldown, breaker, one job."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from drift.models import DriftEvent, DriftReport, DriftStatus, Incident
from labeling.models import Label
from labeling.tests.factories import tasks
from registry import jobs, policies
from registry import tasks as registry_tasks
from registry.models import JobStatus, RetrainingPolicy, TrainingJob
from registry.tests.factories import digits_family, policy

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch):
    """Jobs are saved and their task recorded, not run: these tests are about starting them."""
    seen = []
    monkeypatch.setattr(registry_tasks.run_training_job, "delay_on_commit", seen.append)
    return seen


def labels(n: int, *, at=None, value="3"):
    created = at or timezone.now()
    rows = [Label(task=task, value=value, created=created) for task in tasks(n)]
    Label.objects.bulk_create(rows)


def confirmed_event(device, *, model_version="digits@1", decided_at=None, incident=None):
    return DriftEvent.objects.create(
        device=device,
        client_id=uuid.uuid4(),
        created=timezone.now(),
        model_version=model_version,
        status=DriftStatus.CONFIRMED,
        decided_at=decided_at or timezone.now(),
        incident=incident,
    )


def report(share: float, *, scope="fleet", scope_value=""):
    now = timezone.now()
    return DriftReport.objects.create(
        scope=scope,
        scope_value=scope_value,
        reference_start=now - timedelta(days=2),
        reference_end=now - timedelta(days=1),
        current_start=now - timedelta(days=1),
        current_end=now,
        status="done",
        share_of_drifted_features=share,
        finished_at=now,
    )


def incident():
    now = timezone.now()
    return Incident.objects.create(kind="population", started_at=now, ended_at=now, device_count=5, event_count=9)


class TestTriggering:
    def test_nothing_happened_nothing_runs_and_the_reason_says_so(self):
        decision = policies.evaluate_policy(policy())
        assert decision.trigger is None and "no drift confirmed" in decision.reason

    def test_confirmed_drift_with_enough_new_labels_triggers_with_its_incidents(self, device_a):
        rule = policy(min_new_labels=5)
        linked = incident()
        confirmed_event(device_a.device, incident=linked)
        labels(5)
        decision = policies.evaluate_policy(rule)
        assert decision.trigger == policies.DRIFT
        assert decision.incident_ids == (linked.pk,) and decision.evidence["new_labels"] == 5

    def test_confirmed_drift_without_enough_labels_waits_and_says_how_many(self, device_a):
        rule = policy(min_new_labels=5)
        confirmed_event(device_a.device)
        labels(4)
        decision = policies.evaluate_policy(rule)
        assert decision.trigger is None and "only 4 of 5 new labels" in decision.reason

    def test_labels_and_drift_from_before_the_last_job_do_not_count(self, device_a):
        rule = policy(min_new_labels=2, cooldown_minutes=0)
        confirmed_event(device_a.device, decided_at=timezone.now() - timedelta(hours=2))
        labels(3, at=timezone.now() - timedelta(hours=2))
        rule.last_job_at = timezone.now() - timedelta(hours=1)
        rule.save()
        assert policies.evaluate_policy(rule).trigger is None

    def test_another_familys_drift_does_not_count(self, device_a):
        rule = policy(min_new_labels=1)
        confirmed_event(device_a.device, model_version="faces@3")
        labels(3)
        assert policies.evaluate_policy(rule).trigger is None

    def test_devices_on_the_shipped_reference_report_an_empty_version_that_counts(self, device_a):
        rule = policy(min_new_labels=1)
        confirmed_event(device_a.device, model_version="")
        labels(1)
        assert policies.evaluate_policy(rule).trigger == policies.DRIFT

    def test_a_report_over_the_drift_share_threshold_triggers(self):
        rule = policy(min_new_labels=1, on_confirmed_drift=False, drift_share_threshold=0.5)
        labels(2)
        report(0.4)
        assert policies.evaluate_policy(rule).trigger is None
        report(0.6)
        decision = policies.evaluate_policy(rule)
        assert decision.trigger == policies.DRIFT_SHARE and "60%" in decision.reason

    def test_a_report_on_another_familys_version_does_not_count(self):
        rule = policy(min_new_labels=1, on_confirmed_drift=False, drift_share_threshold=0.5)
        labels(2)
        report(0.9, scope="model_version", scope_value="faces@2")
        assert policies.evaluate_policy(rule).trigger is None

    def test_the_schedule_triggers_once_due_and_only_with_new_labels(self):
        rule = policy(schedule_hours=6, on_confirmed_drift=False)
        rule.created = timezone.now() - timedelta(hours=7)
        rule.save()
        assert policies.evaluate_policy(rule).trigger is None  # due, but nothing new to learn from
        labels(1)
        assert policies.evaluate_policy(rule).trigger == policies.SCHEDULE
        rule.created = timezone.now() - timedelta(hours=5)
        rule.save()
        assert policies.evaluate_policy(rule).trigger is None


class TestGuards:
    @pytest.fixture
    def ready(self, device_a):
        rule = policy(min_new_labels=1, cooldown_minutes=60)
        confirmed_event(device_a.device)
        labels(2)
        return rule

    def test_a_disabled_policy_does_not_trigger(self, ready):
        policies.set_enabled(ready, False)
        assert policies.evaluate_policy(ready).reason == "policy is disabled"

    def test_the_cooldown_holds_a_policy_back(self, ready):
        ready.last_job_at = timezone.now() - timedelta(minutes=30)
        ready.save()
        confirmed_event(DriftEvent.objects.first().device)
        labels(2)
        assert "cooling down until" in policies.evaluate_policy(ready).reason

    def test_one_job_at_a_time(self, ready, enqueued):
        job = policies.check_policy(ready)
        assert job.status == JobStatus.QUEUED and enqueued == [job.pk]
        ready.refresh_from_db()
        ready.last_job_at = timezone.now() - timedelta(days=1)  # no cooldown: only the running job blocks
        ready.save()
        assert f"job {job.pk} is queued" == policies.evaluate_policy(ready).reason
        with pytest.raises(policies.PolicyBusy, match="is queued"):
            policies.run_policy(ready)

    def test_failures_in_a_row_open_the_breaker_and_a_success_resets_the_count(self, ready, enqueued):
        ready.max_failures, ready.cooldown_minutes = 2, 0
        ready.save()
        for _ in range(2):
            jobs.fail(policies.run_policy(ready), "boom")
        ready.refresh_from_db()
        assert ready.consecutive_failures == 2 and ready.breaker_open_until > timezone.now()
        assert "circuit breaker open" in policies.evaluate_policy(ready).reason
        with pytest.raises(policies.PolicyBusy, match="circuit breaker open"):
            policies.run_policy(ready)
        policies.set_enabled(ready, True)  # an operator resumes it: the breaker closes
        ready.refresh_from_db()
        assert ready.breaker_open_until is None and ready.consecutive_failures == 0

    def test_a_breaker_closes_by_itself_after_its_time(self, ready, enqueued):
        ready.max_failures, ready.breaker_minutes, ready.cooldown_minutes = 1, 10, 0
        ready.save()
        jobs.fail(policies.run_policy(ready), "boom")
        ready.refresh_from_db()
        confirmed_event(DriftEvent.objects.first().device)  # new evidence after that job
        labels(1)
        assert "circuit breaker open" in policies.evaluate_policy(ready).reason
        later = timezone.now() + timedelta(minutes=11)
        assert policies.evaluate_policy(ready, later).trigger == policies.DRIFT

    def test_a_manual_run_skips_labels_and_cooldown_but_not_a_running_job(self, enqueued):
        rule = policy(cooldown_minutes=600)
        rule.last_job_at = timezone.now()
        rule.save()
        job = policies.run_policy(rule, reason="after the firmware update")
        assert job.trigger == policies.MANUAL and job.evidence == {"reason": "after the firmware update"}

    def test_check_all_starts_only_the_policies_that_trigger(self, ready, enqueued):
        quiet = policy(min_new_labels=10_000)
        enabled = RetrainingPolicy.objects.filter(enabled=True).count()
        assert policies.check_all() == {"policies": enabled, "started": 1}
        assert TrainingJob.objects.get().policy == ready
        assert not TrainingJob.objects.filter(policy=quiet).exists()


class TestStaleJobs:
    def test_a_running_job_without_progress_is_failed_and_counted(self, enqueued, settings):
        rule = policy()
        job = policies.run_policy(rule)
        TrainingJob.objects.filter(pk=job.pk).update(
            status=JobStatus.RUNNING,
            heartbeat_at=timezone.now() - timedelta(minutes=settings.TRAINING_STALE_MINUTES + 1),
        )
        assert jobs.fail_stale_jobs() == {"failed": 1, "requeued": 0}
        job.refresh_from_db()
        rule.refresh_from_db()
        assert job.status == JobStatus.FAILED and "worker was lost" in job.error and rule.consecutive_failures == 1

    def test_a_queued_job_whose_message_was_lost_is_enqueued_again(self, monkeypatch, settings):
        sent = []
        monkeypatch.setattr(registry_tasks.run_training_job, "delay_on_commit", lambda pk: None)
        monkeypatch.setattr(registry_tasks.run_training_job, "delay", sent.append)
        job = policies.run_policy(policy())
        TrainingJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(hours=1))
        assert jobs.fail_stale_jobs()["requeued"] == 1 and sent == [job.pk]

    def test_a_duplicate_message_finds_the_job_taken(self, enqueued):
        job = policies.run_policy(policy())
        TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, claim="task-1")
        assert jobs.run_job(job.pk, claim="task-2") == "skipped"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_processes_starting_the_same_policy_get_one_job(monkeypatch):
    monkeypatch.setattr(registry_tasks.run_training_job, "delay_on_commit", lambda pk: None)
    rule = policy()
    barrier, outcomes = threading.Barrier(4), []

    def start():
        try:
            barrier.wait()
            outcomes.append(jobs.start_job(rule.family, policy=rule, trigger="manual").pk)
        except policies.PolicyBusy as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert TrainingJob.objects.filter(policy=rule).count() == 1
    assert sum(isinstance(outcome, int) for outcome in outcomes) == 1
    assert digits_family().jobs.count() == 1
