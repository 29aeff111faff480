"""A training job from queued to promoted, archived or failed, run inline (tasks are eager)."""

from __future__ import annotations

import pytest
from django.core.files.storage import storages
from django.utils import timezone

from drift.models import Incident
from edge_client.bundles import BundleManager
from edge_client.pipeline import load_bundle
from labeling.models import TaskSource
from registry import jobs, policies, training, versions
from registry.models import CHALLENGER, CHAMPION, JobStatus, VersionStatus
from registry.tests.factories import digits_family, policy
from registry.tests.test_training import labeled, stream
from registry.tests.test_versions import _Serving

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(monkeypatch):
    seen = []
    monkeypatch.setattr(jobs, "publish", lambda topic, event, data: seen.append((topic, event, data)))
    return seen


def run(family, capture, **fields):
    """Start a job and let its task run, as it does once the starting transaction commits."""
    with capture(execute=True):
        job = jobs.start_job(family, **fields)
    job.refresh_from_db()
    return job


@pytest.fixture
def rotated_labels():
    labeled(*stream(200, "rotation", 90.0, seed=11), source=TaskSource.QUARANTINE)
    labeled(*stream(40, "rotation", 90.0, seed=12), source=TaskSource.UNCERTAIN)


def test_a_job_that_beats_the_champion_registers_a_challenger_with_its_lineage(
    rotated_labels, events, django_capture_on_commit_callbacks
):
    rule = policy(search={"n_components": [16], "k": [3]})
    now = timezone.now()
    incident = Incident.objects.create(kind="cohort", started_at=now, ended_at=now, device_count=3, event_count=7)
    job = run(rule.family, django_capture_on_commit_callbacks, policy=rule, trigger="drift", incident_ids=[incident.pk])

    assert job.status == JobStatus.PROMOTED and job.progress == 1.0 and job.attempts == 1
    version = job.produced_version
    champion = versions.alias_version(rule.family, CHAMPION)
    assert versions.alias_version(rule.family, CHALLENGER) == version
    assert (version.parent, version.snapshot, version.policy) == (champion, job.snapshot, rule)
    assert list(version.incidents.all()) == [incident] and job.base_version == champion
    assert version.metrics["candidate"]["holdout_accuracy"] > version.metrics["champion"]["holdout_accuracy"]
    assert job.reason == version.metrics.get("reason", job.reason) and str(rule.promotion_margin) in job.reason
    assert version.min_memory_mb > jobs.CLIENT_BASE_MEMORY_MB
    stages = [data()["stage"] if callable(data) else data["stage"] for _, event, data in events]
    assert stages[-1] == "done" and "freezing the dataset snapshot" in stages


def test_the_registered_bundle_is_what_a_device_installs_and_it_predicts_as_evaluated(
    rotated_labels, tmp_path, django_capture_on_commit_callbacks
):
    rule = policy(search={"n_components": [16], "k": [3]})
    job = run(digits_family(), django_capture_on_commit_callbacks, policy=rule, trigger="manual")
    version = job.produced_version
    with storages["artifacts"].open(version.bundle_key, "rb") as handle:
        data = handle.read()
    manager = BundleManager(tmp_path, loader=load_bundle, http=_Serving(data))
    outcome = manager.apply(versions.desired_model(version) | {"url": "http://server/b"})
    assert outcome.status == "installed" and manager.current().version == version.label
    images, _ = stream(50, "rotation", 90.0, seed=99)
    features = training.extract_features(images)
    transform, knn = load_bundle(manager.current().path)
    on_device = knn.predict_batch(transform.transform(features)).labels
    served = versions.load_model(version).predict(features)[0]
    assert [str(label) for label in on_device.tolist()] == served


def test_a_candidate_short_of_the_margin_is_registered_archived_with_the_reason(
    rotated_labels, django_capture_on_commit_callbacks
):
    rule = policy(promotion_margin=0.9, search={"n_components": [16], "k": [3]})
    job = run(rule.family, django_capture_on_commit_callbacks, policy=rule, trigger="manual")
    assert job.status == JobStatus.ARCHIVED and "margin" in job.reason
    version = job.produced_version
    assert version.status == VersionStatus.ARCHIVED and version.archived_reason == job.reason
    assert versions.alias_version(rule.family, CHALLENGER) is None


def test_a_job_that_cannot_train_fails_with_the_reason_and_counts_toward_the_breaker(
    django_capture_on_commit_callbacks,
):
    rule = policy(max_failures=1)
    job = run(rule.family, django_capture_on_commit_callbacks, policy=rule, trigger="manual")  # no labels at all
    rule.refresh_from_db()
    assert job.status == JobStatus.FAILED and "TrainingError" in job.error
    assert rule.consecutive_failures == 1 and rule.breaker_open_until is not None
    assert "circuit breaker open" in policies.blocked_reason(rule)


def test_a_success_closes_the_failure_count(rotated_labels, django_capture_on_commit_callbacks):
    rule = policy(search={"n_components": [16], "k": [3]})
    rule.consecutive_failures = 2
    rule.save()
    run(rule.family, django_capture_on_commit_callbacks, policy=rule, trigger="manual")
    rule.refresh_from_db()
    assert rule.consecutive_failures == 0


def test_a_queued_job_can_be_cancelled_and_a_finished_one_cannot(monkeypatch):
    from registry import tasks

    monkeypatch.setattr(tasks.run_training_job, "delay_on_commit", lambda pk: None)
    job = jobs.start_job(digits_family(), trigger="manual")
    assert jobs.cancel(job) and job.status == JobStatus.CANCELLED
    assert not jobs.cancel(job)
