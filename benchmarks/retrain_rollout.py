"""Retraining and rollout: one training job end to end at 1,000 and 10,000 labeled samples, and a
staged rollout to 1,000 simulated devices — to the whole fleet, then a bad version halted by its
health gate and rolled back fleet-wide.

Run from the project root::

    .venv/bin/python benchmarks/retrain_rollout.py [--sizes 1000,10000] [--devices 1000]
                                                   [--threads 16] [--workers 2]
                                                   [--skip-training] [--skip-rollout]

It starts and stops everything it measures, on loopback, in a scratch PostgreSQL database
``sphere_bench_retrain`` (created, migrated and dropped for each part, as benchmarks/labeling.py
does) with a temporary DATA_DIR:

1. **Training.** A ``manage.py shell`` child seeds labeled tasks with real images: digits from
   ``edge_client.datagen`` turned about a quarter (90° ± 10°) with pixel noise, each stored as the
   server stores a quarantined sample (the float32 ``image.npy`` rendered by
   ``drift.services.render_png`` into the drift_images storage), 80 % quarantine and 20 %
   uncertain tasks of the digits class set, one operator label each, bulk-inserted. Another child
   runs one job as the worker does: ``registry.jobs.start_job`` (its enqueue replaced by nothing)
   with the ``digits default`` policy, then ``registry.jobs.run_job``. MLflow is on, with its
   SQLite store in DATA_DIR; the child first opens the store (its first use runs migrations) and
   loads the TFLite extractor and the shipped digits' features, which a long-lived worker does
   once, and reports those apart. Sizes run smallest first on one database: the next size seeds
   only the difference, so its snapshot holds all of them.
2. **Rollout.** 1,000 devices with tokens (``issue_credential``) and a runtime that passes
   preflight; ``digits@1`` (the shipped reference, champion), ``digits@2`` and ``digits@3`` (the
   same reference with another k). uvicorn on loopback; a ticker child runs
   ``registry.rollouts.tick_all()`` every 0.5 s (what the beat's ``registry.tick_rollouts`` task
   runs every 30 s). The devices are simulated in this process by a thread pool, one
   ``requests.Session`` per thread. In a *round* every device syncs once: a heartbeat with the
   version it serves, its runtime and last bundle outcome; when the answer's ``model`` names
   another bundle it fetches it with its token and checks size and sha256 (a bundle still in its
   rollback slot is switched to without a download, as the edge client does), and reports it as
   serving on its next heartbeat; then it posts a batch of predictions whose confidence depends on
   the version (0.9 for digits@1 and @2, 0.3 for digits@3). Rounds run back to back.
   Scenario A rolls digits@2 out in phases 5 % / 25 % / 100 %, scenario B rolls digits@3 out the
   same way and its canary's confidence fails the health gate: halt, fleet rollback.
   Gates: ``min_observation_minutes`` 0 and ``min_predictions`` 50, so a phase can be judged as
   soon as its devices have reported once (the defaults observe 10 minutes per phase); the others
   are the defaults.

Figures (no targets in the issue; each is printed with what it means):

- training: seconds end to end and per stage (snapshot, features, search, fit, evaluate,
  register, MLflow), the outcome and accuracies of candidate and champion, the child's peak RSS;
- rollout: per round the heartbeat latency seen by the devices (closed loop, ``--threads`` in
  flight) and the server's own time per heartbeat (a ``Server-Timing`` header added by a
  middleware in a settings module this script writes to the temp dir; the Django handling only,
  without queueing in uvicorn), server CPU per sync, and the same for ``--serial`` devices syncing
  one at a time (the cost of a sync with nothing queued); time from start to every device active
  and to the rollout completed, from the halt decision to every assignment rolled back and every
  device that ran the bad version reporting the baseline again (from the database's own
  timestamps: decisions, assignments, telemetry), in rounds and seconds; the decision trail of both.

The last line printed is one JSON object with every figure. Exit status 0 when both jobs finished
(promoted or archived), rollout A completed and rollout B was halted and rolled back.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import benchmarks.labeling as labeling_bench  # noqa: E402
from benchmarks.fleet_heartbeats import (  # noqa: E402
    CpuMeter,
    background_cores,
    heartbeat_body,
    percentile,
    print_server_errors,
    running_server,
)
from benchmarks.labeling import migrate, scratch_database, shell, sphere_env, stats_ms  # noqa: E402

DB_NAME = "sphere_bench_retrain"
HEARTBEAT_PATH = "/api/v1/device/heartbeat"
PREDICTIONS_PATH = "/api/v1/device/predictions"
REQUEST_TIMEOUT_S = 30.0
GOOD_K, BAD_K = 3, 7  # the shipped reference has k = 5
MIN_MEMORY_MB = 128
RUNTIME = {"memory_total_mb": 427.0, "python": "3.11.2", "numpy": "2.2.6", "litert": "2.0.2", "client": "0.1.0"}
# Mean confidence each version's predictions report: digits@3 is the bad one.
QUALITY = {"digits@1": 0.9, "digits@2": 0.9, "digits@3": 0.3}
GATES = {"min_observation_minutes": 0, "min_predictions": 50}
IN_PROGRESS = ("assigned", "downloading")

# --- Child-process code (manage.py shell -c); each gets PARAMS and prints "<TAG> <json>" -------

SEED_TRAINING_CODE = r"""
import io, os, time
from datetime import timedelta
import numpy as np
from django.core.files.storage import storages
from django.utils import timezone
from devices.ingest.archive import load_npy
from drift.services import render_png
from edge_client import datagen
from labeling.models import ClassSet, Label, LabelOrigin, LabelTask, ReviewStatus, TaskSource, TaskStatus

started = time.perf_counter()
first, count = PARAMS["first"], PARAMS["count"]
digits_set = ClassSet.objects.get(name="digits")
sample = datagen.load_digits_sample()
rng = np.random.default_rng(PARAMS["seed"] + first)
when = timezone.now() - timedelta(days=1)
folder = os.path.join(storages["drift_images"].location, "bench-train")
os.makedirs(folder, exist_ok=True)

def stored_png(image):
    # What the server keeps of a quarantined sample: the device's float32 image.npy as a PNG.
    buffer = io.BytesIO()
    np.save(buffer, image.astype(np.float32), allow_pickle=False)
    return render_png(load_npy(buffer.getvalue(), "image.npy"), "image.npy")

tasks, labels, image_bytes = [], [], 0
for n in range(first, first + count):
    index = int(rng.integers(len(sample.labels)))
    image = datagen.rotate(sample.images[index].astype(np.float64), 90.0 + rng.normal(0.0, 10.0))
    image = datagen.add_noise(image, 0.5, rng)
    key = f"bench-train/{n}.png"
    with open(os.path.join(folder, f"{n}.png"), "wb") as handle:
        image_bytes += handle.write(stored_png(image))
    tasks.append(LabelTask(
        key=f"bench:train:{n}", source=TaskSource.QUARANTINE if n % 5 else TaskSource.UNCERTAIN,
        class_set=digits_set, status=TaskStatus.DONE, image_area="drift_images", image_key=key,
        created=when, model_version="digits@1",
    ))
    labels.append(str(int(sample.labels[index])))
images_s = time.perf_counter() - started
tasks = LabelTask.objects.bulk_create(tasks, batch_size=1000)
Label.objects.bulk_create(
    [Label(task=task, value=value, origin=LabelOrigin.OPERATOR, review=ReviewStatus.NOT_NEEDED, created=when)
     for task, value in zip(tasks, labels)],
    batch_size=1000,
)
print("SEEDED " + json.dumps({
    "tasks": count, "total_tasks": LabelTask.objects.count(), "images_s": round(images_s, 2),
    "seconds": round(time.perf_counter() - started, 2), "image_bytes": image_bytes,
}))
"""

# One job as the worker runs it, with every stage timed from the outside: progress() stage names,
# and wrappers around the functions _train calls by module attribute.
TRAIN_CODE = r"""
import time
from labeling import snapshots
from registry import jobs, tasks, tracking, training
from registry.models import RetrainingPolicy

warm = {}
started = time.perf_counter()
tracking.client().search_experiments()  # MLflow import and its SQLite store (migrations on a new file)
warm["mlflow_s"] = round(time.perf_counter() - started, 3)
started = time.perf_counter()
training.shipped_extractor()
training._shipped_features()
warm["extractor_and_shipped_features_s"] = round(time.perf_counter() - started, 3)

marks = []

def mark(name):
    marks.append((time.perf_counter(), name))

def wrap(owner, attribute, before, after):
    original = getattr(owner, attribute)
    def wrapper(*args, **kwargs):
        mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            mark(after)
    setattr(owner, attribute, wrapper)

STAGES = {"freezing the dataset snapshot": "snapshot", "registering the version": "register"}
original_progress = jobs.progress

def progress(job, fraction, stage):
    name = STAGES.get(stage, stage)
    if marks[-1][1] != name:
        mark(name)
    original_progress(job, fraction, stage)

jobs.progress = progress
wrap(snapshots, "create_snapshot", "snapshot", "champion")
wrap(jobs, "_register", "register", "mlflow")
wrap(jobs, "_decide", "decide", "mlflow")
wrap(jobs, "_finish", "finish", "end")
tasks.run_training_job.delay_on_commit = lambda *args, **kwargs: None  # the job runs right here

policy = RetrainingPolicy.objects.select_related("family").get(name="digits default")
job = jobs.start_job(policy.family, policy=policy, trigger="manual", evidence={"benchmark": "retrain_rollout"})
mark("claim")
status = jobs.run_job(job.pk, claim="bench")
mark("end")
stages = {}
for (at, name), (after, _) in zip(marks, marks[1:]):
    stages[name] = stages.get(name, 0.0) + (after - at)
job.refresh_from_db()
version = getattr(job, "produced_version", None)
print("TRAIN " + json.dumps({
    "status": status, "reason": job.reason, "error": job.error[:2000], "total_s": marks[-1][0] - marks[0][0],
    "stages_s": stages, "warmup": warm, "result": job.result, "params": version.params if version else {},
    "version": version.label if version else None, "mlflow_run_id": job.mlflow_run_id,
    "snapshot_items": job.snapshot.item_count if job.snapshot else None,
}))
"""

SEED_ROLLOUT_CODE = r"""
import time
import numpy as np
import edge_client
from devices.models import Device, DeviceGroup
from devices.services import issue_credential
from edge_client.knn import KNN
from edge_client.pipeline import BUNDLE_KNN, BUNDLE_TRANSFORM, SHIPPED_REFERENCE
from edge_client.transforms import FeatureTransform
from registry import versions
from registry.bundles import build_bundle
from registry.models import ModelFamily

started = time.perf_counter()
family = ModelFamily.objects.select_related("class_set").get(name="digits")
shipped = versions.ensure_shipped_version(family)
transform = FeatureTransform.from_params(json.loads((SHIPPED_REFERENCE / BUNDLE_TRANSFORM).read_text()))
made = {"shipped": shipped}
for role, k in (("good", PARAMS["good_k"]), ("bad", PARAMS["bad_k"])):
    with np.load(SHIPPED_REFERENCE / BUNDLE_KNN, allow_pickle=False) as arrays:
        knn = KNN.from_state({key: arrays[key] for key in arrays.files})
    knn.k = k
    number = versions.next_number(family)
    built = build_bundle(
        label=f"{family.name}@{number}", classes=family.class_set.classes, transform=transform, knn=knn,
        feature_dim=transform.input_dim, extra={"benchmark": "retrain_rollout", "role": role},
    )
    made[role] = versions.register_version(
        family, built, number=number, feature_dim=transform.input_dim, parent=shipped, source="upload",
        params={"k": k, "origin": "the shipped reference with another k"},
        runtime={"client": edge_client.__version__}, min_memory_mb=PARAMS["min_memory_mb"],
    )
group = DeviceGroup.objects.create(name="bench-rollout", heartbeat_period_s=60, grace_s=180)
devices = Device.objects.bulk_create([
    Device(name=f"bench-{i:05d}", group=group, runtime=PARAMS["runtime"], client_version=edge_client.__version__,
           model_version=shipped.label)
    for i in range(PARAMS["devices"])
])
tokens = {str(device.pk): issue_credential(device) for device in devices}
with open(PARAMS["tokens_path"], "w") as handle:
    json.dump(tokens, handle)
print("SEEDED " + json.dumps({
    "versions": {
        role: {"label": v.label, "sha256": v.bundle_sha256, "size": v.bundle_size} for role, v in made.items()
    },
    "devices": len(tokens), "seconds": round(time.perf_counter() - started, 2),
}))
"""

START_CODE = r"""
from registry import rollouts, versions
version = versions.resolve("digits", PARAMS["version"])
rollout = rollouts.start_rollout(version, phases=PARAMS["phases"], gates=PARAMS["gates"], name=PARAMS["name"])
start = rollout.decisions.get(action="start")
print("STARTED " + json.dumps({
    "id": rollout.pk, "start_at": start.at.timestamp(),
    "baseline": rollout.baseline.label if rollout.baseline else None, "assigned": rollout.assignments.count(),
}))
"""

# The beat's registry.tick_rollouts runs this every 30 s; here every PARAMS["period"] seconds.
TICKER_CODE = r"""
import os, time
from registry import rollouts
print("TICKER ready", flush=True)
while not os.path.exists(PARAMS["stop"]):
    started = time.perf_counter()
    done = rollouts.tick_all()
    spent = time.perf_counter() - started
    print("TICK " + json.dumps({"at": time.time(), "s": round(spent, 4), **done}), flush=True)
    time.sleep(max(0.0, PARAMS["period"] - spent))
"""

# Settings for the server only: sphere.settings plus a middleware, outermost, that tells each
# answer how long Django spent on it. Measures what RequestMetricsMiddleware measures.
TIMING_SETTINGS = r"""
from sphere.settings import *  # noqa: F403

from time import perf_counter as _perf_counter


class ServerTiming:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = _perf_counter()
        response = self.get_response(request)
        response["Server-Timing"] = f"app;dur={(_perf_counter() - started) * 1000:.3f}"
        return response


MIDDLEWARE = [f"{__name__}.ServerTiming", *MIDDLEWARE]  # noqa: F405
"""
TIMING_MODULE = "sphere_bench_timing"


def child_code(template: str, **params) -> str:
    return f"import json\nPARAMS = json.loads({json.dumps(params)!r})\n{template}"


# --- Part 1: training ---------------------------------------------------------------------------


def training_part(args, data_dir: Path) -> dict:
    sizes = sorted(args.sizes)
    with scratch_database(args, data_dir) as db:
        env = sphere_env(db, data_dir, args.env)
        migrate(env)
        results, seeded = {}, 0
        for size in sizes:
            made, _ = shell(
                env, child_code(SEED_TRAINING_CODE, first=seeded, count=size - seeded, seed=7), "SEEDED", data_dir
            )
            seeded = size
            figures, peak_kib = shell(env, child_code(TRAIN_CODE), "TRAIN", data_dir)
            results[str(size)] = summarise_job(figures, made, peak_kib)
            print_job(size, results[str(size)])
    return results


def summarise_job(figures: dict, seeded: dict, peak_kib: int) -> dict:
    result = figures.get("result") or {}
    total = figures["total_s"]
    stages = {name: round(seconds, 3) for name, seconds in figures["stages_s"].items() if name != "end"}
    accuracy = {
        side: {key: (result.get(side) or {}).get(key) for key in ("holdout_accuracy", "drift_accuracy")}
        for side in ("candidate", "champion")
    }
    return {
        "status": figures["status"],
        "reason": figures["reason"],
        "error": figures["error"],
        "version": figures["version"],
        "snapshot_items": figures["snapshot_items"],
        "samples": result.get("samples"),
        "chosen": {key: figures["params"].get(key) for key in ("n_components", "k", "weights", "references")},
        "total_s": round(total, 2),
        "stages_s": stages,
        "mlflow_share": round(stages.get("mlflow", 0.0) / total, 3) if total else None,
        "accuracy": accuracy,
        "warmup_s": figures["warmup"],
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "seeding": seeded,
    }


STAGE_ORDER = ("claim", "snapshot", "champion", "features", "search", "fit", "evaluate", "register", "mlflow")
STAGE_NOTES = {
    "claim": "claim the job, set the progress row",
    "snapshot": "freeze the dataset snapshot",
    "champion": "load the champion, write params",
    "features": "read + decode every image, TFLite extractor",
    "search": "grid search, 3-fold CV (scikit-learn)",
    "fit": "fit the best setting, edge-client objects",
    "evaluate": "candidate and champion on held-out + drift sets",
    "register": "build the bundle, store it, version row",
    "mlflow": "MLflow run, params, metrics, bundle artifact, registry, aliases",
    "decide": "challenger alias or archive",
    "finish": "final row update, live event",
}


def print_job(size: int, job: dict) -> None:
    seeding = job["seeding"]
    print(
        f"\ntraining job at {size:,} labeled samples (snapshot of {job['snapshot_items']:,} items; seeded "
        f"{seeding['tasks']:,} tasks with PNGs in {seeding['seconds']} s): {job['status']} in {job['total_s']} s, "
        f"peak RSS of the child {job['peak_rss_mib']} MiB"
    )
    for name in (*STAGE_ORDER, *sorted(set(job["stages_s"]) - set(STAGE_ORDER))):
        seconds = job["stages_s"].get(name)
        if seconds is None:
            continue
        share = seconds / job["total_s"] if job["total_s"] else 0
        print(f"  {name:<9} {seconds:8.2f} s  {share:6.1%}  {STAGE_NOTES.get(name, '')}")
    acc = job["accuracy"]
    print(
        f"  holdout accuracy: candidate {acc['candidate']['holdout_accuracy']} vs champion "
        f"{acc['champion']['holdout_accuracy']}; drift set: candidate {acc['candidate']['drift_accuracy']} vs "
        f"champion {acc['champion']['drift_accuracy']}; samples {job['samples']}; chosen {job['chosen']}"
    )
    print(f"  decision: {job['reason'] or job['error']}")
    print(
        f"  once per worker process, not in the figures above: MLflow import + store {job['warmup_s']['mlflow_s']} s, "
        f"extractor + shipped digits' features {job['warmup_s']['extractor_and_shipped_features_s']} s"
    )


# --- Part 2: the simulated fleet ------------------------------------------------------------------


@dataclass
class SimDevice:
    """What a device keeps: the version serving, its bundles on disk (by sha256), last outcome."""

    pk: str
    token: str
    version: str
    sha256: str
    bundles: set = field(default_factory=set)
    outcome: dict | None = None
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class SyncResult:
    heartbeat_s: float | None = None
    heartbeat_server_ms: float | None = None
    predictions_s: float | None = None
    download_s: float | None = None
    switched: bool = False
    errors: list = field(default_factory=list)


class Fleet:
    def __init__(self, base_url: str, tokens: dict, shipped: dict, args):
        self.base_url, self.args = base_url, args
        self.devices = [
            SimDevice(pk, token, shipped["label"], shipped["sha256"], {shipped["sha256"]}, rng=random.Random(pk))
            for pk, token in tokens.items()
        ]
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(args.threads, thread_name_prefix="device")

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def run_round(self, server_pid: int) -> dict:
        meter = CpuMeter(server_pid)
        meter.begin()
        began, started = time.time(), time.perf_counter()
        results = list(self.pool.map(self.sync, self.devices))
        seconds = time.perf_counter() - started
        return summarise_round(results, seconds, meter.end(), began)

    def run_serial(self, server_pid: int, count: int) -> dict:
        """Devices syncing one at a time: what one sync costs the server when nothing queues."""
        meter = CpuMeter(server_pid)
        meter.begin()
        began, started = time.time(), time.perf_counter()
        results = [self.sync(device) for device in self.devices[:count]]
        seconds = time.perf_counter() - started
        return summarise_round(results, seconds, meter.end(), began)

    def sync(self, device: SimDevice) -> SyncResult:
        result, session = SyncResult(), self.session()
        auth = {"Authorization": f"Bearer {device.token}"}
        try:
            model = self.heartbeat(session, device, auth, result)
            if model and model.get("sha256") != device.sha256:
                self.apply(session, device, model, auth, result)
            self.predict(session, device, auth, result)
        except (requests.RequestException, ValueError) as exc:
            result.errors.append(type(exc).__name__)
        return result

    def heartbeat(self, session, device: SimDevice, auth: dict, result: SyncResult) -> dict | None:
        body = {**heartbeat_body(), "model_version": device.version, "runtime": RUNTIME}
        if device.outcome:
            body["bundle"] = device.outcome
        started = time.perf_counter()
        answer = session.post(self.base_url + HEARTBEAT_PATH, json=body, headers=auth, timeout=REQUEST_TIMEOUT_S)
        result.heartbeat_s = time.perf_counter() - started
        result.heartbeat_server_ms = server_timing_ms(answer.headers.get("Server-Timing", ""))
        if answer.status_code != 200:
            result.errors.append(f"heartbeat_{answer.status_code}")
            return None
        return answer.json().get("model")

    def apply(self, session, device: SimDevice, model: dict, auth: dict, result: SyncResult) -> None:
        """Like edge_client.bundles.BundleManager.apply: a bundle still on disk (the rollback
        slot) is switched to at once; any other is fetched and checked first."""
        if model["sha256"] not in device.bundles:
            started = time.perf_counter()
            answer = session.get(self.base_url + model["url"], headers=auth, timeout=REQUEST_TIMEOUT_S)
            result.download_s = time.perf_counter() - started
            data = answer.content
            if answer.status_code != 200 or len(data) != model["size"]:
                result.errors.append(f"download_{answer.status_code}_{len(data)}_bytes")
                return
            if hashlib.sha256(data).hexdigest() != model["sha256"]:
                result.errors.append("download_sha256_mismatch")
                return
            device.bundles.add(model["sha256"])
        device.version, device.sha256, result.switched = model["version"], model["sha256"], True
        device.outcome = {
            "status": "installed",
            "version": model["version"],
            "sha256": model["sha256"],
            "error": "",
            "at": time.time(),
        }

    def predict(self, session, device: SimDevice, auth: dict, result: SyncResult) -> None:
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        quality = QUALITY.get(device.version, 0.9)
        records = []
        for _ in range(self.args.predictions):
            confidence = round(min(max(device.rng.gauss(quality, 0.02), 0.0), 1.0), 4)
            label = str(device.rng.randrange(10))
            records.append(
                {
                    "id": str(uuid.uuid4()),
                    "created": created,
                    "model_version": device.version,
                    "label": label,
                    "confidence": confidence,
                    "probabilities": {label: confidence},
                    "latency_ms": round(device.rng.uniform(6.0, 10.0), 2),
                    "image": None,
                }
            )
        started = time.perf_counter()
        answer = session.post(
            self.base_url + PREDICTIONS_PATH, json={"predictions": records}, headers=auth, timeout=REQUEST_TIMEOUT_S
        )
        result.predictions_s = time.perf_counter() - started
        if answer.status_code != 200:
            result.errors.append(f"predictions_{answer.status_code}")

    def versions_running(self) -> dict:
        counts: dict[str, int] = {}
        for device in self.devices:
            counts[device.version] = counts.get(device.version, 0) + 1
        return counts

    def close(self) -> None:
        self.pool.shutdown()


def server_timing_ms(header: str) -> float | None:
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if name == "app" and rest.startswith("dur="):
            return float(rest.removeprefix("dur="))
    return None


def server_stats(milliseconds: list[float]) -> dict:
    """Like stats_ms, for values already in milliseconds (Server-Timing)."""
    return {
        key: None if value is None else round(value, 2)
        for key, value in (
            ("p50_ms", percentile(milliseconds, 50)),
            ("p95_ms", percentile(milliseconds, 95)),
            ("max_ms", max(milliseconds, default=None)),
        )
    } | {"n": len(milliseconds)}


def summarise_round(results: list[SyncResult], seconds: float, cpu: dict, began: float) -> dict:
    heartbeats = [r.heartbeat_s for r in results if r.heartbeat_s is not None]
    server_ms = [r.heartbeat_server_ms for r in results if r.heartbeat_server_ms is not None]
    downloads = [r.download_s for r in results if r.download_s is not None]
    errors: dict[str, int] = {}
    for r in results:
        for error in r.errors:
            errors[error] = errors.get(error, 0) + 1
    server_cpu = cpu["server_cpu_s"]
    return {
        "began": began,
        "ended": began + seconds,
        "seconds": round(seconds, 2),
        "syncs": len(results),
        "heartbeat": stats_ms(heartbeats),
        "heartbeat_server": server_stats(server_ms),
        "predictions": stats_ms([r.predictions_s for r in results if r.predictions_s is not None]),
        "downloads": stats_ms(downloads),
        "switched": sum(r.switched for r in results),
        "errors": errors,
        "server_cpu_ms_per_sync": round(server_cpu * 1000 / len(results), 2) if server_cpu is not None else None,
        "server_cores": cpu["server_cores"],
        "machine_cores": cpu["machine_cores"],
        "_heartbeat_s": heartbeats,
        "_server_ms": server_ms,
    }


# --- Part 2: the server-side processes and the database ----------------------------------------


@contextlib.contextmanager
def ticker(env: dict, data_dir: Path, period: float):
    """``tick_all()`` in a loop in a child process, until a stop file appears."""
    stop_file, log_path = data_dir / "ticker.stop", data_dir / "ticker.out"
    code = child_code(TICKER_CODE, stop=str(stop_file), period=period)
    with open(log_path, "wb") as out, open(data_dir / "ticker.err", "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while b"TICKER ready" not in log_path.read_bytes():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ticker did not start:\n{(data_dir / 'ticker.err').read_text()[-3000:]}")
            time.sleep(0.1)
        yield log_path
    finally:
        stop_file.touch()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()


def tick_figures(log_path: Path) -> dict:
    ticks = [json.loads(line[5:]) for line in log_path.read_text().splitlines() if line.startswith("TICK ")]
    seconds = [tick["s"] for tick in ticks]
    return {"ticks": len(ticks), **{key: value for key, value in stats_ms(seconds).items() if key != "n"}}


def rollout_state(conn: psycopg.Connection, rollout_id: int) -> dict:
    status, phase = conn.execute("SELECT status, phase FROM registry_rollout WHERE id = %s", (rollout_id,)).fetchone()
    counts = dict(
        conn.execute(
            "SELECT state, count(*) FROM registry_rolloutassignment WHERE rollout_id = %s GROUP BY state", (rollout_id,)
        ).fetchall()
    )
    return {"status": status, "phase": phase, "states": counts, "assignments": sum(counts.values())}


def decisions(conn: psycopg.Connection, rollout_id: int, since: float) -> list[dict]:
    rows = conn.execute(
        "SELECT action, phase, at, reason, automatic FROM registry_rolloutdecision WHERE rollout_id = %s "
        "ORDER BY at, id",
        (rollout_id,),
    ).fetchall()
    return [
        {"action": a, "phase": p, "t_s": round(at.timestamp() - since, 2), "reason": r, "automatic": auto}
        for a, p, at, r, auto in rows
    ]


def champion(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT f.name || '@' || v.number FROM registry_alias a JOIN registry_modelversion v ON v.id = a.version_id "
        "JOIN registry_modelfamily f ON f.id = a.family_id WHERE a.name = 'champion'"
    ).fetchone()
    return row[0] if row else None


def wait_for(check, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


# --- Part 2: the two scenarios --------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    env: dict
    data_dir: Path
    conn: psycopg.Connection
    fleet: Fleet
    server_pid: int
    versions: dict


def start(ctx: Context, label: str, name: str) -> dict:
    code = child_code(START_CODE, version=label, phases=ctx.args.phases, gates=GATES, name=name)
    started, _ = shell(ctx.env, code, "STARTED", ctx.data_dir)
    return started


def play_rounds(ctx: Context, rollout_id: int, done, settle) -> tuple[list[dict], bool]:
    """Rounds until ``done(state)``; when ``settle(state)`` (only the ticker can move it on),
    give the ticker two periods before the next round."""
    rounds = []
    for number in range(1, ctx.args.max_rounds + 1):
        figures = ctx.fleet.run_round(ctx.server_pid)
        state = rollout_state(ctx.conn, rollout_id)
        if not done(state) and settle(state):
            wait_for(lambda: done(rollout_state(ctx.conn, rollout_id)), 2 * ctx.args.tick)
            state = rollout_state(ctx.conn, rollout_id)
        figures.update(round=number, **state, running=ctx.fleet.versions_running())
        print_round(figures)
        rounds.append(figures)
        if done(state):
            return rounds, True
    return rounds, False


def print_round(r: dict) -> None:
    hb, server, dl = r["heartbeat"], r["heartbeat_server"], r["downloads"]
    states = " ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
    print(
        f"  round {r['round']:>2}: {r['seconds']:5.1f} s | heartbeat p50/p95/max {hb['p50_ms']}/{hb['p95_ms']}/"
        f"{hb['max_ms']} ms, server {_f(server['p50_ms'])}/{_f(server['p95_ms'])}/{_f(server['max_ms'])} ms | "
        f"downloads {dl['n']} | CPU/sync {r['server_cpu_ms_per_sync']} ms | errors {sum(r['errors'].values())} | "
        f"{r['status']} phase {r['phase']}: {states} | devices run {r['running']}"
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def scenario_full(ctx: Context) -> dict:
    label = ctx.versions["good"]["label"]
    print(f"\nscenario A: roll {label} out to {len(ctx.fleet.devices):,} devices, phases {ctx.args.phases}")
    started = start(ctx, label, "bench: full rollout")
    devices = len(ctx.fleet.devices)

    def done(state):
        return state["status"] == "completed" and state["states"].get("active", 0) == devices

    def settle(state):
        return not any(state["states"].get(s) for s in IN_PROGRESS)

    rounds, finished = play_rounds(ctx, started["id"], done, settle)
    t0 = started["start_at"]
    trail = decisions(ctx.conn, started["id"], t0)
    all_active_at, active = ctx.conn.execute(
        "SELECT max(active_at), count(*) FILTER (WHERE state = 'active') FROM registry_rolloutassignment "
        "WHERE rollout_id = %s",
        (started["id"],),
    ).fetchone()
    completed = next((d for d in trail if d["action"] == "complete"), None)
    all_active_s = round(all_active_at.timestamp() - t0, 2) if active == devices else None
    completed_s = completed["t_s"] if completed else None
    return {
        "version": label,
        "baseline": started["baseline"],
        "finished": finished,
        "rounds": len(rounds),
        "rounds_to_all_active": _first_round(rounds, lambda r: r["states"].get("active", 0) == devices),
        "rounds_to_completed": _first_round(rounds, lambda r: r["status"] == "completed"),
        "all_active_s": all_active_s,
        "completed_s": completed_s,
        "full_rollout_s": max(all_active_s, completed_s) if all_active_s and completed_s else None,
        "champion_after": champion(ctx.conn),
        "decisions": trail,
        "round_figures": rounds,
    }


def scenario_rollback(ctx: Context) -> dict:
    label = ctx.versions["bad"]["label"]
    print(f"\nscenario B: roll {label} out (its canary reports confidence {QUALITY[label]}), phases {ctx.args.phases}")
    started = start(ctx, label, "bench: bad version")
    rollout_id, baseline = started["id"], started["baseline"]

    def done(state):
        if state["status"] != "halted" or any(state["states"].get(s) for s in ("active", *IN_PROGRESS)):
            return False
        canary = canary_return(ctx.conn, rollout_id, label, baseline)
        return canary["ran"] == canary["back"]

    def settle(state):
        return state["status"] == "running" and not any(state["states"].get(s) for s in IN_PROGRESS)

    rounds, finished = play_rounds(ctx, rollout_id, done, settle)
    t0 = started["start_at"]
    trail = decisions(ctx.conn, rollout_id, t0)
    halt = next((d for d in trail if d["action"] == "halt"), None)
    last_confirmed, confirmed, recalled = ctx.conn.execute(
        "SELECT max(updated) FILTER (WHERE reason LIKE 'rolled back to %%'), "
        "count(*) FILTER (WHERE reason LIKE 'rolled back to %%'), "
        "count(*) FILTER (WHERE reason LIKE 'recalled%%') "
        "FROM registry_rolloutassignment WHERE rollout_id = %s AND state = 'rolled_back'",
        (rollout_id,),
    ).fetchone()
    canary = canary_return(ctx.conn, rollout_id, label, baseline)
    halt_at = canary.get("halt_at")
    after_halt = [r for r in rounds if halt_at is not None and r["ended"] > halt_at.timestamp()]
    confirmed_s = _since(last_confirmed, halt_at) if finished else None
    back_s = _since(canary.get("last_back"), halt_at) if finished else None
    return {
        "version": label,
        "baseline": baseline,
        "finished": finished,
        "rounds": len(rounds),
        "halt_s": halt["t_s"] if halt else None,
        "halt_reason": halt["reason"] if halt else None,
        "assignments": confirmed + recalled,
        "ran_bad_version": canary.get("ran"),
        "confirmed_by_heartbeat": confirmed,
        "recalled_before_install": recalled,
        "all_rolled_back_s": confirmed_s,
        "all_reported_baseline_s": back_s,
        "rollback_s": max((v for v in (confirmed_s, back_s) if v is not None), default=None),
        "rounds_after_halt": len(after_halt) if finished else None,
        "champion_after": champion(ctx.conn),
        "decisions": trail,
        "round_figures": rounds,
    }


def canary_return(conn: psycopg.Connection, rollout_id: int, bad: str, baseline: str) -> dict:
    """The rollout's devices that ever reported ``bad``, and when each first reported ``baseline``
    after the halt, from their heartbeats (telemetry rows)."""
    halt_at = conn.execute(
        "SELECT min(at) FROM registry_rolloutdecision WHERE rollout_id = %s AND action = 'halt'", (rollout_id,)
    ).fetchone()[0]
    if halt_at is None:
        return {"ran": None, "back": None}
    ran, back, last_back = conn.execute(
        "SELECT count(*) FILTER (WHERE ran), count(back) FILTER (WHERE ran), max(back) FILTER (WHERE ran) FROM ("
        "  SELECT EXISTS (SELECT 1 FROM devices_telemetry t WHERE t.device_id = a.device_id"
        "                 AND t.model_version = %s) AS ran,"
        "         (SELECT min(t.received_at) FROM devices_telemetry t WHERE t.device_id = a.device_id"
        "          AND t.model_version = %s AND t.received_at >= %s) AS back"
        "  FROM registry_rolloutassignment a WHERE a.rollout_id = %s) AS per_device",
        (bad, baseline, halt_at, rollout_id),
    ).fetchone()
    return {"ran": ran, "back": back, "last_back": last_back, "halt_at": halt_at}


def _since(moment, origin) -> float | None:
    return None if moment is None or origin is None else round((moment - origin).total_seconds(), 2)


def serial_probe(ctx: Context) -> dict:
    count = min(ctx.args.serial, len(ctx.fleet.devices))
    figures = ctx.fleet.run_serial(ctx.server_pid, count)
    del figures["_server_ms"], figures["_heartbeat_s"]
    hb, server = figures["heartbeat"], figures["heartbeat_server"]
    print(
        f"\n{count} devices syncing one at a time (nothing to change, nothing queued): heartbeat seen by the device "
        f"p50/p95/max {hb['p50_ms']}/{hb['p95_ms']}/{hb['max_ms']} ms, Django's own time "
        f"{_f(server['p50_ms'])}/{_f(server['p95_ms'])}/{_f(server['max_ms'])} ms, "
        f"server CPU {figures['server_cpu_ms_per_sync']} ms per sync (heartbeat + predictions)"
    )
    return figures


def _first_round(rounds: list[dict], check) -> int | None:
    return next((r["round"] for r in rounds if check(r)), None)


def rollout_part(args, data_dir: Path) -> dict:
    with scratch_database(args, data_dir) as db:
        env = sphere_env(db, data_dir, args.env)
        migrate(env)
        tokens_path = data_dir / "tokens.json"
        code = child_code(
            SEED_ROLLOUT_CODE,
            good_k=GOOD_K,
            bad_k=BAD_K,
            min_memory_mb=MIN_MEMORY_MB,
            runtime=RUNTIME,
            devices=args.devices,
            tokens_path=str(tokens_path),
        )
        seeded, _ = shell(env, code, "SEEDED", data_dir)
        print(f"\nrollout part: seeded {seeded['devices']:,} devices with tokens and versions {seeded['versions']}")
        tokens = json.loads(tokens_path.read_text())
        (data_dir / f"{TIMING_MODULE}.py").write_text(TIMING_SETTINGS)
        server_env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(data_dir), env.get("PYTHONPATH")])),
            "DJANGO_SETTINGS_MODULE": TIMING_MODULE,
        }
        log_path = data_dir / "server.log"
        with (
            psycopg.connect(db, autocommit=True) as conn,
            running_server(server_env, args.workers, log_path) as (base_url, server_pid),
            ticker(env, data_dir, args.tick) as tick_log,
        ):
            fleet = Fleet(base_url, tokens, seeded["versions"]["shipped"], args)
            try:
                ctx = Context(args, env, data_dir, conn, fleet, server_pid, seeded["versions"])
                warm = fleet.run_round(server_pid)
                print(
                    f"\nwarm-up round (each device's first heartbeat: new -> online), not scored: "
                    f"{warm['seconds']} s, heartbeat p50 {warm['heartbeat']['p50_ms']} ms, errors {warm['errors']}"
                )
                result = {"seed": seeded, "warmup_round_s": warm["seconds"]}
                result["full"] = scenario_full(ctx)
                result["rollback"] = scenario_rollback(ctx)
                result["serial"] = serial_probe(ctx)
            finally:
                fleet.close()
        result["ticker"] = tick_figures(tick_log)
        print_server_errors(log_path)
    result["syncs"] = sync_figures([*result["full"]["round_figures"], *result["rollback"]["round_figures"]])
    return result


def sync_figures(rounds: list[dict]) -> dict:
    """Every heartbeat of both scenarios' rounds: the devices' latency and the server's time."""
    client = [s for r in rounds for s in r.pop("_heartbeat_s")]
    server = [s for r in rounds for s in r.pop("_server_ms")]
    metered = [r for r in rounds if r["server_cpu_ms_per_sync"] is not None]
    syncs = sum(r["syncs"] for r in metered)
    return {
        "heartbeats": len(client),
        "client": stats_ms(client),
        "server": server_stats(server),
        "server_cpu_ms_per_sync": (
            round(sum(r["server_cpu_ms_per_sync"] * r["syncs"] for r in metered) / syncs, 2) if syncs else None
        ),
        "round_s": {
            "p50": percentile([r["seconds"] for r in rounds], 50),
            "max": max((r["seconds"] for r in rounds), default=None),
        },
        "errors": sum(sum(r["errors"].values()) for r in rounds),
    }


# --- Report -----------------------------------------------------------------------------------------


def print_trail(title: str, trail: list[dict]) -> None:
    print(f"  decisions of {title} (seconds after start, action, phase, reason):")
    for d in trail:
        who = "" if d["automatic"] else " [operator]"
        print(f"    {d['t_s']:7.2f} s  {d['action']:<8} phase {d['phase']}{who}  {d['reason'][:150]}")


def report(args, result: dict) -> bool:
    checks = {}
    training = result.get("training")
    if training:
        print("\n=== Retraining: one job end to end, as the worker runs it ===")
        for size, job in training.items():
            mlflow = job["stages_s"].get("mlflow", 0.0)
            print(
                f"  {int(size):>6,} labeled samples: {job['total_s']:6.2f} s ({job['status']}); features "
                f"{job['stages_s'].get('features', 0):.2f} s, search+fit "
                f"{job['stages_s'].get('search', 0) + job['stages_s'].get('fit', 0):.2f} s, MLflow {mlflow:.2f} s "
                f"({job['mlflow_share']:.0%} of the job); candidate {job['accuracy']['candidate']['holdout_accuracy']} "
                f"vs champion {job['accuracy']['champion']['holdout_accuracy']} held out, "
                f"{job['accuracy']['candidate']['drift_accuracy']} vs {job['accuracy']['champion']['drift_accuracy']} "
                f"on the drift set; peak RSS {job['peak_rss_mib']} MiB"
            )
            checks[f"training_{size}_finished"] = job["status"] in ("promoted", "archived")
        sizes = sorted(training, key=int)
        if len(sizes) > 1:
            small, large = training[sizes[0]], training[sizes[-1]]
            ratios = ", ".join(
                f"{name} {large['stages_s'][name] / small['stages_s'][name]:.1f}x"
                for name in STAGE_ORDER
                if small["stages_s"].get(name) and large["stages_s"].get(name)
            )
            print(
                f"  {int(sizes[-1]) / int(sizes[0]):g}x the samples took {large['total_s'] / small['total_s']:.2f}x "
                f"the time; by stage: {ratios}"
            )
    rollout = result.get("rollout")
    if rollout:
        full, back, syncs = rollout["full"], rollout["rollback"], rollout["syncs"]
        print(f"\n=== Rollout to {args.devices:,} simulated devices ===")
        print(
            f"  devices sync back to back: {args.threads} in flight, uvicorn with {args.workers} workers, every sync "
            f"a heartbeat + {args.predictions} predictions (+ a bundle download when told); the ticker runs "
            f"tick_all() every {args.tick} s; gates {GATES} over the defaults."
        )
        print(
            f"  server time per sync, {syncs['heartbeats']:,} heartbeats of both scenarios: seen by the device p50 "
            f"{syncs['client']['p50_ms']} / p95 {syncs['client']['p95_ms']} / max {syncs['client']['max_ms']} ms "
            f"(closed loop: includes waiting behind the other {args.threads - 1} in flight); Django's own time "
            f"(Server-Timing) p50 {_f(syncs['server']['p50_ms'])} / p95 {_f(syncs['server']['p95_ms'])} / max "
            f"{_f(syncs['server']['max_ms'])} ms; server CPU {syncs['server_cpu_ms_per_sync']} ms per sync "
            f"(heartbeat + predictions + downloads); a round of {args.devices:,} syncs p50 "
            f"{syncs['round_s']['p50']} s; errors {syncs['errors']}"
        )
        serial = rollout["serial"]
        print(
            f"  one sync at a time ({serial['syncs']} devices): heartbeat p50 {serial['heartbeat']['p50_ms']} / p95 "
            f"{serial['heartbeat']['p95_ms']} ms seen by the device, server CPU {serial['server_cpu_ms_per_sync']} ms "
            "per sync: the cost of a sync without contention"
        )
        print(
            f"  A) {full['version']} to the whole fleet in {full['full_rollout_s']} s: rollout completed after "
            f"{full['completed_s']} s (round {full['rounds_to_completed']}), every device active on it after "
            f"{full['all_active_s']} s (round {full['rounds_to_all_active']}); champion now {full['champion_after']}. "
            "The last phase completes once half its devices reported (min_reporting_share 0.5), so the last ones "
            "may confirm after it. Devices synced back to back; at a heartbeat period P the same takes about "
            f"{full['rounds']} x P."
        )
        print_trail(f"rollout A ({full['version']})", full["decisions"])
        print(
            f"  B) {back['version']} halted {back['halt_s']} s after its start: {back['halt_reason']} Fleet rollback "
            f"in {back['rollback_s']} s ({back['rounds_after_halt']} rounds ended after the halt): all "
            f"{back['assignments']} assignments rolled back after {back['all_rolled_back_s']} s "
            f"({back['confirmed_by_heartbeat']} confirmed by the device's heartbeat, "
            f"{back['recalled_before_install']} marked at the halt as 'recalled before it was installed'); every one "
            f"of the {back['ran_bad_version']} devices that had run {back['version']} reported {back['baseline']} "
            f"again after {back['all_reported_baseline_s']} s (their heartbeats); champion {back['champion_after']}"
        )
        print_trail(f"rollout B ({back['version']})", back["decisions"])
        print(f"  ticker: {rollout['ticker']}")
        checks["rollout_completed"] = bool(full["finished"])
        checks["rollout_halted_and_rolled_back"] = bool(back["finished"])
        checks["zero_sync_errors"] = syncs["errors"] == 0
    line = {
        "benchmark": "retrain_rollout",
        "database": "postgresql",
        "cpu_count": os.cpu_count(),
        "load_average": result["load_average"],
        "background_cores": result["background_cores"],
        "devices": args.devices,
        "threads": args.threads,
        "workers": args.workers,
        "phases": args.phases,
        "gates": GATES,
        **{key: value for key, value in result.items() if key not in ("load_average", "background_cores")},
        "checks": checks,
        "ok": all(checks.values()),
    }
    print(json.dumps(line, default=str))
    return line["ok"]


# --- Entry point ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[1000, 10000], help="labeled samples per training job")
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices")
    parser.add_argument("--threads", type=int, default=16, help="devices syncing at the same time")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--predictions", type=int, default=5, help="predictions each device posts per sync")
    parser.add_argument("--phases", type=_floats, default=[0.05, 0.25, 1.0], help="rollout phases (shares)")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between rollout ticks")
    parser.add_argument("--max-rounds", type=int, default=15, help="give a scenario up after this many rounds")
    parser.add_argument("--serial", type=int, default=200, help="devices in the one-at-a-time sync probe at the end")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-rollout", action="store_true")
    parser.add_argument("--tmp-dir", help="where the temporary DATA_DIR is made; default: the system's")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every process"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL role allowed to create databases; the scratch database is made beside it",
    )
    parser.set_defaults(sqlite=False)  # scratch_database's switch; this benchmark reads PostgreSQL directly
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    labeling_bench.DB_NAME = DB_NAME  # scratch_database names its database after this module global
    load = [round(value, 2) for value in os.getloadavg()]
    background = background_cores()
    print(f"load average {load}; other processes keep {background} of {os.cpu_count()} cores busy")
    result = {"load_average": load, "background_cores": background}
    with tempfile.TemporaryDirectory(prefix="sphere-bench-retrain-", dir=args.tmp_dir) as tmp:
        if not args.skip_training:
            folder = Path(tmp) / "training"
            folder.mkdir()
            result["training"] = training_part(args, folder)
        if not args.skip_rollout:
            folder = Path(tmp) / "rollout"
            folder.mkdir()
            result["rollout"] = rollout_part(args, folder)
    return 0 if report(args, result) else 1


if __name__ == "__main__":
    sys.exit(main())
