"""A retraining job run by a real Celery worker on PostgreSQL and Redis, start to finish.

The worker listens only on the `training` queue, so the job reaching it proves the route; it
shares the test's database, Redis and data directory (DATA_DIR/media is the test's storage, and
MLflow's SQLite store lands in DATA_DIR), so the run is mirrored to a real MLflow store too.
"""

from __future__ import annotations

import pytest
from django.core.files.storage import storages

from labeling.models import TaskSource
from registry import policies, versions
from registry.models import CHALLENGER, JobStatus, TrainingJob
from registry.tests.factories import digits_family, policy
from registry.tests.test_training import labeled, stream
from tests.celery_helpers import (  # noqa: F401 - the fixtures celery_process, no_eager, _empty_queues
    celery_process_fixture,
    empty_queues_fixture,
    no_eager_fixture,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def finished(job: TrainingJob) -> bool:
    job.refresh_from_db()
    return job.status not in (JobStatus.QUEUED, JobStatus.RUNNING)


def test_a_worker_on_the_training_queue_runs_a_job_from_labels_to_a_registered_challenger(
    celery_process, no_eager, tmp_path
):
    digits_family()
    labeled(*stream(200, "rotation", 90.0, seed=21), source=TaskSource.QUARANTINE)
    labeled(*stream(40, "rotation", 90.0, seed=22), source=TaskSource.UNCERTAIN)
    rule = policy(search={"n_components": [16], "k": [3]})
    worker = celery_process(
        "worker", "-Q", "training", "--concurrency", "1", "-n", "trainer@%h", "--loglevel", "INFO",
        "--without-mingle", "--without-gossip",
        MLFLOW_ENABLED="1",
    )  # fmt: skip
    worker.wait_until_ready()

    job = policies.run_policy(rule, reason="worker test")
    wait_for(lambda: finished(job), timeout=120, logs=[worker.log])

    assert job.status == JobStatus.PROMOTED, (job.error, worker.output()[-3000:])
    assert job.attempts == 1 and job.progress == 1.0 and job.claim
    version = job.produced_version
    assert versions.alias_version(rule.family, CHALLENGER) == version
    assert storages["artifacts"].exists(version.bundle_key)
    assert version.mlflow_run_id and version.mlflow_model_version  # mirrored by the worker
    assert (tmp_path / "mlflow.sqlite3").exists()
    assert f"Task registry.run_training_job[{job.claim}] succeeded" in worker.output()
