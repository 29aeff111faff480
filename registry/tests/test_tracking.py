"""The MLflow mirror against a real SQLite store: runs with params, metrics and the bundle,
registered versions, aliases following Sphere's, and an unreachable server that costs nothing."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient

from edge_client.knn import KNN
from edge_client.transforms import FeatureTransform, StandardScaler
from labeling.models import ClassSet
from labeling.snapshots import create_snapshot
from registry import tracking
from registry.models import Alias, ModelFamily, ModelVersion, TrainingJob
from registry.tests.factories import policy
from registry.training import TrainingResult

pytestmark = [
    pytest.mark.django_db,
    # Raised inside MLflow's own SQLAlchemy models, on its first store of the session.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

BUNDLE = b"\x1f\x8b not really a bundle, but bytes to carry"


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One migrated SQLite store for the whole file: creating one takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.sqlite3'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the first use creates the tables
    return SimpleNamespace(uri=uri, artifacts=root / "artifacts")


@pytest.fixture(autouse=True)
def _tracking_to_the_test_store(settings, mlflow_store):
    settings.MLFLOW_TRACKING_URI = mlflow_store.uri
    settings.MLFLOW_ARTIFACT_ROOT = str(mlflow_store.artifacts)
    settings.MLFLOW_ENABLED = True


@pytest.fixture
def family():
    """A family of its own per test: the store outlives each test's database rows."""
    name = f"fam-{uuid.uuid4().hex[:8]}"
    class_set = ClassSet.objects.create(name=name, classes=["a", "b"])
    return ModelFamily.objects.create(name=name, class_set=class_set)


@pytest.fixture
def mlflow(mlflow_store):
    return MlflowClient(tracking_uri=mlflow_store.uri, registry_uri=mlflow_store.uri)


def result(promote=True) -> TrainingResult:
    transform = FeatureTransform([StandardScaler([0.0, 0.0], [1.0, 1.0])])
    return TrainingResult(
        transform=transform,
        knn=KNN(k=1, max_size=4).fit(np.eye(2), [0, 1]),
        classes=["a", "b"],
        feature_dim=2,
        params={"strategy": "replay", "n_components": 16, "k": 3, "weights": "uniform", "train_counts": {"recent": 7}},
        metrics={
            "candidate": {"holdout_accuracy": 0.9125, "drift_accuracy": None, "per_class": {"a": 1.0, "b/../c": 0.5}},
            "champion": {"holdout_accuracy": 0.8},
            "samples": {"train": 40, "skipped_no_image": 2},
            "search": [{"n_components": 16, "k": 3, "weights": "uniform", "score": 0.88}],
        },
        promote=promote,
        reason="candidate 0.912 vs champion 0.800 on 80 held-out samples: gain 0.112 >= margin 0.010",
    )


def job_of(family, **fields) -> TrainingJob:
    snapshot = create_snapshot(family.class_set)
    rule = policy(family, search={"k": [3]})
    return TrainingJob.objects.create(family=family, policy=rule, snapshot=snapshot, trigger="drift", **fields)


def version_of(family, number: int, mlflow_version: str = "") -> ModelVersion:
    return ModelVersion.objects.create(
        family=family,
        number=number,
        bundle_key=f"bundles/{family.name}/{number}.tar.gz",
        bundle_sha256=f"{number:064x}",
        bundle_size=len(BUNDLE),
        feature_dim=2,
        mlflow_model_version=mlflow_version,
    )


def registered(family, number: int) -> ModelVersion:
    version = version_of(family, number)
    run_id = tracking.log_training(job_of(family), result(), bundle_bytes=BUNDLE, version=version)
    version.mlflow_model_version = tracking.register(version, run_id)
    version.save(update_fields=["mlflow_model_version"])
    assert version.mlflow_model_version
    return version


# --- Runs -------------------------------------------------------------------------------------


def test_a_job_is_one_run_with_its_params_metrics_tags_and_bundle(family, mlflow):
    job = job_of(family)
    version = version_of(family, 2)

    run_id = tracking.log_training(job, result(), bundle_bytes=BUNDLE, version=version)

    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"job-{job.pk}"
    assert mlflow.get_experiment(run.info.experiment_id).name == f"sphere/{family.name}"
    params = run.data.params
    assert {key: params[key] for key in ("strategy", "n_components", "k", "weights", "job_id", "policy")} == {
        "strategy": "replay",
        "n_components": "16",
        "k": "3",
        "weights": "uniform",
        "job_id": str(job.pk),
        "policy": job.policy.name,
    }
    assert (params["snapshot_id"], params["snapshot_version"]) == (str(job.snapshot.pk), str(job.snapshot.version))
    assert params["snapshot_hash"] == job.snapshot.content_hash and params["version"] == version.label
    assert params["train_counts/recent"] == "7"
    assert run.data.metrics == {
        "candidate/holdout_accuracy": 0.9125,
        "candidate/per_class/a": 1.0,
        "candidate/per_class/b____c": 0.5,
        "champion/holdout_accuracy": 0.8,
        "samples/train": 40.0,
        "samples/skipped_no_image": 2.0,
        "search/pca16_k3_uniform": 0.88,
        "promote": 1.0,
    }
    tags = run.data.tags
    assert (tags["sphere.job"], tags["sphere.trigger"], tags["sphere.decision"]) == (str(job.pk), "drift", "promote")
    assert tags["mlflow.note.content"] == result().reason
    downloaded = Path(mlflow.download_artifacts(run_id, f"bundle/{tracking.BUNDLE_FILE}"))
    assert downloaded.read_bytes() == BUNDLE


def test_artifacts_of_a_local_store_go_under_the_artifact_root(family, mlflow, mlflow_store):
    run_id = tracking.log_training(job_of(family), result(promote=False), bundle_bytes=BUNDLE)

    stored = mlflow_store.artifacts / family.name / run_id / "artifacts" / "bundle" / tracking.BUNDLE_FILE
    assert stored.read_bytes() == BUNDLE
    assert mlflow.get_run(run_id).data.tags["sphere.decision"] == "archive"


def test_logging_the_same_job_again_returns_its_run(family, mlflow):
    job = job_of(family)
    first = tracking.log_training(job, result(), bundle_bytes=None)

    again = tracking.log_training(job, result(), bundle_bytes=None)

    experiment = mlflow.get_experiment_by_name(f"sphere/{family.name}")
    assert again == first and len(mlflow.search_runs([experiment.experiment_id])) == 1


# --- Registry and aliases ---------------------------------------------------------------------


def test_a_version_is_registered_once_under_the_family_name(family, mlflow):
    version = version_of(family, 2)
    run_id = tracking.log_training(job_of(family), result(), bundle_bytes=BUNDLE, version=version)

    number = tracking.register(version, run_id)

    assert number == tracking.register(version, run_id) == "1"
    registered_version = mlflow.get_model_version(family.name, number)
    assert registered_version.run_id == run_id and registered_version.source == f"runs:/{run_id}/bundle"
    assert registered_version.tags["sphere.version"] == version.label
    assert tracking.register(version, "") == ""  # no run: nothing to point at


def test_aliases_follow_sphere_moves_and_removals(family, mlflow):
    two, three = registered(family, 2), registered(family, 3)
    unmirrored = version_of(family, 4)  # never logged: MLflow has no version to point at
    champion = Alias.objects.create(family=family, name="champion", version=two)
    challenger = Alias.objects.create(family=family, name="challenger", version=three)
    Alias.objects.create(family=family, name="canary", version=unmirrored)

    assert tracking.mirror_aliases(family)
    assert mlflow.get_registered_model(family.name).aliases == {"champion": 1, "challenger": 2}

    champion.version = three
    champion.save()
    challenger.delete()
    assert tracking.mirror_aliases(family)
    assert mlflow.get_registered_model(family.name).aliases == {"champion": 2}


def test_an_alias_mlflow_refuses_does_not_stop_the_others(family, mlflow):
    two = registered(family, 2)
    Alias.objects.create(family=family, name="champion", version=two)
    Alias.objects.create(family=family, name="v1", version=two)  # fine for Sphere, reserved in MLflow

    assert not tracking.mirror_aliases(family)
    assert mlflow.get_registered_model(family.name).aliases == {"champion": 1}


# --- Failures ---------------------------------------------------------------------------------


def test_an_unreachable_tracking_server_costs_an_empty_answer_not_an_error(family, settings, monkeypatch, caplog):
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:9"  # the discard port: connection refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    version = version_of(family, 2, mlflow_version="1")
    Alias.objects.create(family=family, name="champion", version=version)
    started = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="registry.tracking"):
        assert tracking.log_training(job_of(family), result(), bundle_bytes=BUNDLE, version=version) == ""
        assert tracking.register(version, "0" * 32) == ""
        assert tracking.mirror_aliases(family) is False

    assert time.monotonic() - started < 15
    assert [r.getMessage() for r in caplog.records] == [
        f"MLflow {name} failed; Sphere carries on without it" for name in ("log_training", "register", "mirror_aliases")
    ]


def test_tracking_turned_off_talks_to_no_one(family, settings, monkeypatch):
    settings.MLFLOW_ENABLED = False
    monkeypatch.setattr(tracking, "client", lambda: pytest.fail("MLflow was called"))

    assert tracking.log_training(job_of(family), result(), bundle_bytes=BUNDLE) == ""
    assert tracking.register(version_of(family, 2), "abc") == ""
    assert tracking.mirror_aliases(family) is False


def test_an_alias_moved_on_any_path_reaches_mlflow_after_commit(family, mlflow, django_capture_on_commit_callbacks):
    from registry import versions

    two = registered(family, 2)
    with django_capture_on_commit_callbacks(execute=True):
        versions.move_alias(family, "champion", two, reason="a rollout completed")  # not a training job's path
    assert str(mlflow.get_model_version_by_alias(family.name, "champion").version) == two.mlflow_model_version
