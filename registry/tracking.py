"""MLflow: one run per training job, registered model versions, and aliases mirrored.

Sphere's tables are the source of truth; MLflow is a mirror for people who browse experiments.
So every public function here catches MLflow's errors, logs them, and returns an empty answer
("" or False): a tracking outage never fails a training job, and the next job logs as usual.

- **Where.** ``settings.MLFLOW_TRACKING_URI``: a tracking server (``http://mlflow:5000``, which
  also stores artifacts), or a database store Sphere writes itself — by default SQLite in the
  data directory, with artifacts under ``settings.MLFLOW_ARTIFACT_ROOT``. ``MLFLOW_ENABLED=0``
  turns tracking off.
- **What.** Experiment ``sphere/<family>``; a run per job named ``job-<id>`` with the strategy,
  the chosen hyper-parameters, the snapshot (id, version, content hash), the job and policy as
  params, every number of the evaluation as metrics, the bundle as artifact ``bundle/``, and tags
  ``sphere.job``, ``sphere.trigger``, ``sphere.decision``. A registered model per family, one
  model version per Sphere version trained by a job (source ``runs:/<run>/bundle``), and the
  family's aliases set to match ``registry.models.Alias`` (aliases Sphere no longer has are
  removed). Calling any of them again for the same job or version changes nothing.
- **Cost.** ``mlflow`` is imported on first use, not at Django start-up (about 1.5 s). MLflow
  keeps one store per URI per process, so a SQLite store's migrations (seconds, on a new file)
  run once per process; tests share one migrated store per session. Against a tracking server,
  MLflow would retry a failing request 7 times over about 4 minutes with a 120 s timeout: unless
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set, Sphere uses 2
  retries and 10 s, so an outage costs a job seconds, not minutes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
BUNDLE_FILE = "bundle.tar.gz"
SERVER_SCHEMES = ("http", "https", "databricks")
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits (mlflow.utils.validation).
MAX_PARAM_LENGTH = 6000
BATCH_SIZE = 100
_UNSAFE_NAME = re.compile(r"[^\w\-]")


def enabled() -> bool:
    return bool(getattr(settings, "MLFLOW_ENABLED", True) and settings.MLFLOW_TRACKING_URI)


def _never_fails(empty):
    """Return ``empty`` instead of raising: MLflow is a mirror, its failures are only logged."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if not enabled():
                return empty
            try:
                return function(*args, **kwargs)
            except Exception:  # MLflow, SQLAlchemy, requests and OS errors alike
                logger.warning("MLflow %s failed; Sphere carries on without it", function.__name__, exc_info=True)
                return empty

        return wrapper

    return decorate


def client():
    """An MlflowClient on the configured tracking and registry URI."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)  # MLflow reads them at each request
    from mlflow import MlflowClient

    uri = settings.MLFLOW_TRACKING_URI
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(family) -> str:
    return f"sphere/{family.name}"


# --- Runs -------------------------------------------------------------------------------------


@_never_fails("")
def log_training(job, result, *, bundle_bytes: bytes | None = None, version=None) -> str:
    """Log ``job``'s training ``result`` as one run; returns its run id ("" on failure)."""
    mlflow = client()
    experiment_id = _experiment_id(mlflow, experiment_name(job.family), job.family.name)
    logged = _finished_run_of(mlflow, experiment_id, job.pk)
    if logged:
        return logged
    run_id = mlflow.create_run(experiment_id, run_name=f"job-{job.pk}", tags=_tags(job, result, version)).info.run_id
    try:
        _log_values(mlflow, run_id, _params(job, result, version), _metrics(result))
        if bundle_bytes is not None:
            _log_bundle(mlflow, run_id, bundle_bytes)
    except Exception:
        mlflow.set_terminated(run_id, "FAILED")
        raise
    mlflow.set_terminated(run_id, "FINISHED")
    return run_id


def _experiment_id(mlflow, name: str, folder: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(folder))
    except Exception:
        found = mlflow.get_experiment_by_name(name)  # another worker created it meanwhile
        if found is None:
            raise
        return found.experiment_id


def _artifact_location(folder: str) -> str | None:
    """Where a database store keeps a family's artifacts; a tracking server decides for itself."""
    if urlparse(settings.MLFLOW_TRACKING_URI).scheme in SERVER_SCHEMES:
        return None
    root = str(settings.MLFLOW_ARTIFACT_ROOT)
    if "://" in root and not root.startswith("file://"):  # s3://bucket/prefix and the like
        return f"{root.rstrip('/')}/{folder}"
    return (Path(root.removeprefix("file://")).resolve() / folder).as_uri()


def _finished_run_of(mlflow, experiment_id: str, job_id: int) -> str:
    """A finished run already logged for this job (the task ran twice): reused, not doubled."""
    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`sphere.job` = '{int(job_id)}' and attributes.status = 'FINISHED'"
    )
    return runs[0].info.run_id if runs else ""


def _tags(job, result, version) -> dict[str, str]:
    tags = {
        "sphere.job": str(job.pk),
        "sphere.trigger": job.trigger,
        "sphere.family": job.family.name,
        "sphere.decision": "promote" if result.promote else "archive",
        "mlflow.note.content": result.reason,  # the run's description in the MLflow UI
    }
    if version is not None:
        tags["sphere.version"] = version.label
    return tags


def _params(job, result, version) -> dict[str, str]:
    params = {
        "job_id": job.pk,
        "trigger": job.trigger,
        **{_name(path): v for path, v in _flatten(result.params).items()},
    }
    if job.snapshot_id is not None:
        snapshot = job.snapshot
        params |= {"snapshot_id": snapshot.pk, "snapshot_version": snapshot.version}
        params["snapshot_hash"] = snapshot.content_hash
    if job.policy_id is not None:
        params |= {"policy": job.policy.name, "policy_id": job.policy_id, "search": json.dumps(job.policy.search)}
    if job.base_version_id is not None:
        params["base_version"] = job.base_version.label
    if version is not None:
        params["version"] = version.label
    return {key: str(value)[:MAX_PARAM_LENGTH] for key, value in params.items() if value is not None}


def _metrics(result) -> dict[str, float]:
    metrics = {_name(path): value for path, value in _flatten(result.metrics).items() if path[0] != "search"}
    for row in result.metrics.get("search") or []:
        if row.get("score") is not None:
            metrics[_name(("search", f"pca{row['n_components']}_k{row['k']}_{row['weights']}"))] = row["score"]
    metrics["promote"] = float(result.promote)
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _flatten(values: dict, prefix: tuple = ()) -> dict[tuple, object]:
    """{("candidate", "per_class", "3"): 0.9, ...}: nested keys as paths, for MLflow's flat names."""
    flat = {}
    for key, value in values.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            flat |= _flatten(value, path)
        else:
            flat[path] = value
    return flat


def _name(path: tuple) -> str:
    """MLflow takes letters, digits, _ - . : / and spaces, and no path tricks; class names can be anything."""
    return "/".join(_UNSAFE_NAME.sub("_", part) or "_" for part in path)


def _log_values(mlflow, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    param_list = [Param(key, value) for key, value in params.items()]
    metric_list = [Metric(key, value, now, 0) for key, value in metrics.items()]
    for start in range(0, max(len(param_list), len(metric_list)), BATCH_SIZE):
        batch = slice(start, start + BATCH_SIZE)
        mlflow.log_batch(run_id, metrics=metric_list[batch], params=param_list[batch])


def _log_bundle(mlflow, run_id: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="sphere-bundle-") as folder:
        path = Path(folder) / BUNDLE_FILE
        path.write_bytes(data)
        mlflow.log_artifact(run_id, str(path), artifact_path=BUNDLE_DIR)


# --- Registry ---------------------------------------------------------------------------------


@_never_fails("")
def register(version, run_id: str) -> str:
    """Register ``version`` (its run's bundle) in MLflow's model registry under the family's
    name; returns the MLflow model version ("" on failure, or without a run to point at)."""
    if not run_id:
        return ""
    mlflow = client()
    name = version.family.name
    _ensure_registered_model(mlflow, version.family)
    existing = mlflow.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(existing[0].version)
    created = mlflow.create_model_version(
        name,
        source=f"runs:/{run_id}/{BUNDLE_DIR}",
        run_id=run_id,
        tags={"sphere.version": version.label, "sphere.sha256": version.bundle_sha256},
        description=f"Sphere {version.label}",
    )
    return str(created.version)


def _ensure_registered_model(mlflow, family) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(family.name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        mlflow.create_registered_model(family.name, tags={"sphere.family": family.name}, description=family.description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another worker registered it meanwhile
            raise


@_never_fails(False)
def mirror_aliases(family) -> bool:
    """Point the registered model's aliases where Sphere's point, and remove the ones Sphere no
    longer has (or whose version is not in MLflow). True when every alias is mirrored."""
    mlflow = client()
    wanted = {
        alias.name: alias.version.mlflow_model_version
        for alias in family.aliases.select_related("version")
        if alias.version.mlflow_model_version
    }
    current = _current_aliases(mlflow, family, create=bool(wanted))
    mirrored = True
    for alias, number in wanted.items():
        if str(current.get(alias, "")) != number:
            mirrored &= _try(mlflow.set_registered_model_alias, family.name, alias, number)
    for alias in current.keys() - wanted.keys():
        mirrored &= _try(mlflow.delete_registered_model_alias, family.name, alias)
    return mirrored


def _current_aliases(mlflow, family, *, create: bool) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow.get_registered_model(family.name).aliases)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    if create:
        _ensure_registered_model(mlflow, family)
    return {}


def _try(call, *args) -> bool:
    """One alias at a time: a name MLflow refuses ('latest', 'v2') must not stop the others."""
    try:
        call(*args)
    except Exception:
        logger.warning("MLflow %s%s failed", call.__name__, args, exc_info=True)
        return False
    return True
