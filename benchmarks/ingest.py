"""Ingestion throughput: prediction logs over HTTP against PostgreSQL's own COPY, and packages
through one Celery worker up to the operator's live event.

Run from the project root::

    .venv/bin/python benchmarks/ingest.py [--rows 300000] [--duration 15] [--concurrency 4]
                                          [--packages 200] [--live-packages 30] [--part all]

It starts and stops everything it measures, on loopback: a scratch PostgreSQL database (migrated,
dropped at the end), a Redis database (``--redis-db``, flushed at start and end) for the broker
and the channel layer, ``uvicorn sphere.asgi:application`` with 2 workers, and for part B one
Celery worker process (``-Q ingest -c 1``).

A) Prediction logs: rows per second through ``POST /api/v1/device/predictions`` for batches of 1,
   100 and 1,000, against the ceiling of a binary COPY of the same rows into the same table in
   1,000-row committed transactions (and, for reference, one COPY of all rows and Django's
   bulk_create). Target: batch 1,000 reaches at least half of the COPY ceiling.
B) Packages of 20 sample images: packages per second drained by one worker (target >= 20/s), and
   the time from upload to the ``package.processed`` event on an operator's websocket (target: the
   event arrives under 1 s after processing ends).

The last line printed is one JSON object with every figure. Exit status 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import collections
import contextlib
import gzip
import hashlib
import http.cookiejar
import io
import json
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import psycopg
import redis
from celery import Celery
from PIL import Image
from websockets.asyncio.client import connect as ws_connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fleet_heartbeats import (  # noqa: E402
    background_cores,
    machine_busy_s,
    manage,
    percentile,
    print_server_errors,
    running_server,
    scratch_database,
)

PREDICTIONS_PATH = "/api/v1/device/predictions"
PACKAGES_PATH = "/api/v1/device/packages"
LIVE_PATH = "/ws/live/packages/"
BATCH_SIZES = (1, 100, 1000)
# Batch 1 is two orders of magnitude slower: bodies for this many rows are enough for --duration.
BATCH_1_MAX_ROWS = 60_000
COPY_ROWS_PER_TRANSACTION = 1000
TARGET_COPY_FRACTION = 0.5
TARGET_PACKAGES_PER_S = 20.0
TARGET_LIVE_DELIVERY_S = 1.0
REQUEST_TIMEOUT_S = 60.0
# Image-carrying package kinds, in order of preference (the first one registered is used).
IMAGE_KINDS = ("drift_event", "prediction_images")
# As the edge client (edge_client/sync.py): package ids are UUIDv5 of the kind and record ids.
PACKAGE_NAMESPACE = uuid.UUID("5f0c8f44-4c44-4d41-9a65-7370686572ae")
MODEL_VERSION = "digits@3"
FEATURES = 64

# The endpoint's own COPY (devices/ingest/predictions.py, _copy): same columns, same types.
COPY_SQL = (
    "COPY devices_predictionlog (device_id, received_at, client_id, created, model_version, label, confidence,"
    " probabilities, latency_ms, features, image) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = "uuid timestamptz uuid timestamptz text text float8 jsonb float8 bytea text".split()

# Runs inside `manage.py shell`: devices and tokens made by the real service code, an operator
# for the live feed, and the package kinds this tree registers with the member paths they accept.
SEED_CODE = """
import json
from django.contrib.auth import get_user_model
from devices.ingest import kinds
from devices.models import Device, DeviceGroup
from devices.services import issue_credential
group = DeviceGroup.objects.create(name="bench-ingest")
devices = [Device.objects.create(name=f"ingest-{{i:02d}}", group=group) for i in range({count})]
get_user_model().objects.create_superuser("bench", "bench@example.invalid", {password!r})
members = {{kind: [p.pattern for p in kinds.handler_for(kind).MEMBERS] for kind in kinds.registered_kinds()}}
fleet = {{"devices": [str(d.pk) for d in devices], "tokens": [issue_credential(d) for d in devices], "kinds": members}}
print("FLEET " + json.dumps(fleet))
"""

# Runs inside `manage.py shell`: Django's bulk_create of the same rows, 1,000 per call (each call
# is its own transaction in autocommit mode). Building the model instances is part of the cost.
BULK_CREATE_CODE = """
import pickle, time, orjson
from django.utils import timezone
from devices.models import PredictionLog
with open({path!r}, "rb") as file:
    devices, rows = pickle.load(file)
names = ("client_id", "created", "model_version", "label", "confidence", "probabilities", "latency_ms", "features",
         "image")
fields = [dict(zip(names, row)) for row in rows]
for values in fields:
    values["probabilities"] = orjson.loads(values["probabilities"])
started = time.perf_counter()
for call, first in enumerate(range(0, len(fields), {per_call})):
    device, now = devices[call % len(devices)], timezone.now()
    chunk = fields[first : first + {per_call}]
    PredictionLog.objects.bulk_create([PredictionLog(device_id=device, received_at=now, **v) for v in chunk])
print("BULK_CREATE_S", time.perf_counter() - started)
"""


# --- Environment, fleet, server and worker --------------------------------------------------------


def sphere_env(db_url: str, data_dir: str, redis_url: str, extra: list[str]) -> dict[str, str]:
    """Environment for the server, the worker and `manage.py`: scratch DB, shared data dir (so
    both see the same storages under DATA_DIR/media) and Redis as broker and channel layer."""
    dropped = ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "S3_BUCKET")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(
        DATABASE_URL=db_url,
        DATA_DIR=data_dir,
        REDIS_URL=redis_url,
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",  # DEBUG keeps every SQL query in memory and would skew the figures
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="sphere.settings",
    )
    env.update(item.split("=", 1) for item in extra)
    return env


@contextlib.contextmanager
def flushed_redis(url: str):
    """The Redis database the run uses, emptied before and after (a leftover queue would be drained)."""
    client = redis.Redis.from_url(url)
    leftover = client.dbsize()
    if leftover:
        print(f"flushing {leftover} leftover keys from {url}")
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        print(f"flushed {url}")


@dataclass
class Fleet:
    devices: list[str]
    tokens: list[str]
    kinds: dict[str, list[str]]  # registered package kind -> member path patterns
    password: str

    def auth(self, index: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[index % len(self.tokens)]}"}


def prepare_fleet(env: dict[str, str], count: int) -> Fleet:
    manage(env, "migrate", "--noinput", "-v", "0")
    password = secrets.token_urlsafe(16)
    output = manage(env, "shell", "-c", SEED_CODE.format(count=count, password=password))
    line = next(line for line in output.splitlines() if line.startswith("FLEET "))
    return Fleet(**json.loads(line.removeprefix("FLEET ")), password=password)


@contextlib.contextmanager
def running_worker(env: dict[str, str], node: str, log_path: Path, pool: str = "prefork", concurrency: int = 1):
    """One Celery worker process on the ingest queue; stopped (warm, then killed) afterwards."""
    options = (
        f"-A sphere worker -Q ingest -c {concurrency} -P {pool} --without-gossip --without-mingle -n {node} -l WARNING"
    )
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", *options.split()],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # its pool child, if the parent went first
        worker.wait()


def wait_for_worker(control: Celery, node: str, worker: subprocess.Popen, log_path: Path, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}:\n{log_path.read_text()[-3000:]}")
        if control.control.ping(destination=[node], timeout=0.5):
            return
    raise RuntimeError(f"worker did not answer a ping within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def postgres_pid(conn: psycopg.Connection) -> int | None:
    """The postmaster (parent of our backend), to count PostgreSQL's CPU; None if not local."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


# --- CPU accounting ---------------------------------------------------------------------------------


def cpu_by_process() -> tuple[dict[int, float], dict[int, list[int]]]:
    """CPU seconds used so far by every live process, and each process's children (Linux /proc)."""
    cpu, children = {}, collections.defaultdict(list)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # processes come and go while we read
            line = Path(f"/proc/{pid}/stat").read_text()
            # Fields after the command name, which is in parentheses and may contain spaces.
            rest = line.rsplit(")", 1)[1].split()
            children[int(rest[1])].append(int(pid))
            cpu[int(pid)] = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, children


def tree(root: int, cpu: dict[int, float], children: dict[int, list[int]], keep=None) -> dict[int, float]:
    """CPU seconds of ``root`` and its descendants, by pid; ``keep(pid)`` filters them."""
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in cpu and (keep is None or keep(pid)):
            found[pid] = cpu[pid]
        todo.extend(children.get(pid, []))
    return found


def postgres_processes_of(database: str):
    """Keep PostgreSQL's shared processes (WAL writer, checkpointer …) and the backends of
    ``database``; other databases' backends (a test suite running beside) are someone else's."""

    def keep(pid: int) -> bool:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return f" {database} " in title or "(" not in title  # client backends show "host(port)"

    return keep


@dataclass
class Meter:
    """Cores used over an interval by this process (the load generator), named process trees
    (server, worker, PostgreSQL) and the whole machine. A tree's figure is summed process by
    process, a process born in the interval counting from zero: PostgreSQL starts a backend per
    connection. A process that ends within the interval is not counted (keep connections open
    until ``end``)."""

    roots: dict[str, int | None]
    filters: dict = field(default_factory=dict)  # name -> keep(pid), see postgres_processes_of
    start: dict = field(default_factory=dict)

    def sample(self) -> dict:
        cpu, children = cpu_by_process()
        trees = {
            name: tree(pid, cpu, children, self.filters.get(name)) if pid else None for name, pid in self.roots.items()
        }
        return {"wall": time.perf_counter(), "client": time.process_time(), "machine": machine_busy_s(), **trees}

    def begin(self) -> Meter:
        self.start = self.sample()
        return self

    def end(self) -> dict[str, float | None]:
        now = self.sample()
        wall = now["wall"] - self.start["wall"]
        figures = {}
        for name in now.keys() - {"wall"}:
            used = self._used(self.start[name], now[name])
            figures[f"{name}_cpu_s"] = None if used is None else round(used, 3)
            figures[f"{name}_cores"] = None if used is None else round(used / wall, 2)
        return figures

    @staticmethod
    def _used(before, after) -> float | None:
        if before is None or after is None:
            return None
        if isinstance(after, dict):
            return sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())
        return after - before


def cores_line(cpu: dict) -> str:
    parts = [
        f"{name.removesuffix('_cores')} {'n/a' if value is None else f'{value:.2f}'}"
        for name, value in sorted(cpu.items())
        if name.endswith("_cores")
    ]
    return f"CPU cores busy: {', '.join(parts)} (of {os.cpu_count()}; 'client' is this benchmark process)"


# --- A) Prediction rows and bodies -------------------------------------------------------------------


@dataclass
class Rows:
    """The same prediction rows twice: as the JSON a device sends, and as the Python values the
    endpoint hands to COPY (client_id, created, model_version, label, confidence, probabilities,
    latency_ms, features, image)."""

    json: list[bytes]
    values: list[tuple]


def make_rows(count: int, seed: int = 7) -> Rows:
    rng = np.random.default_rng(seed)
    ids = rng.bytes(16 * count)
    features = rng.standard_normal((count, FEATURES), dtype=np.float32).astype("<f4").tobytes()
    # Plain lists: indexing numpy arrays one scalar at a time would dominate the preparation.
    labels, confidences = rng.integers(0, 10, count).tolist(), rng.uniform(0, 1, count).tolist()
    second, third = rng.uniform(0.3, 1, count).tolist(), rng.uniform(0.2, 1, count).tolist()
    latencies = rng.uniform(3, 15, count).tolist()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rows = Rows([], [])
    for i in range(count):
        label, confidence = str(labels[i]), round(confidences[i], 6)
        p2 = round(min(confidence, 1 - confidence) * second[i], 6)
        p3 = round(min(p2, 1 - confidence - p2) * third[i], 6)
        probabilities = {label: confidence, str((labels[i] + 1) % 10): p2, str((labels[i] + 3) % 10): p3}
        vector = features[i * 4 * FEATURES : (i + 1) * 4 * FEATURES]
        client_id = uuid.UUID(bytes=ids[16 * i : 16 * i + 16], version=4)
        created = base + timedelta(milliseconds=5 * i)
        record = {
            "id": str(client_id),
            "created": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "model_version": MODEL_VERSION,
            "label": label,
            "confidence": confidence,
            "probabilities": probabilities,
            "latency_ms": round(latencies[i], 3),
            "features": binascii.b2a_base64(vector, newline=False).decode(),
            "image": None,
        }
        rows.json.append(orjson.dumps(record))
        latency, probabilities_text = record["latency_ms"], orjson.dumps(probabilities).decode()
        rows.values.append(
            (client_id, created, MODEL_VERSION, label, confidence, probabilities_text, latency, vector, "")
        )
    return rows


def make_bodies(rows: Rows, batch: int, limit: int) -> list[tuple[int, bytes]]:
    """Request bodies of ``batch`` records each, built before timing: (records, body)."""
    encoded = rows.json[:limit]
    chunks = (encoded[i : i + batch] for i in range(0, len(encoded), batch))
    return [(len(chunk), b'{"predictions":[' + b",".join(chunk) + b"]}") for chunk in chunks]


def reset_predictions(conn: psycopg.Connection) -> None:
    """Each measurement starts on an empty table (indexes included) with nothing left to flush."""
    conn.execute("TRUNCATE devices_predictionlog")
    conn.execute("CHECKPOINT")


def stored_predictions(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM devices_predictionlog").fetchone()[0]


# --- A) HTTP load -----------------------------------------------------------------------------------


@dataclass
class PostRun:
    records_sent: int = 0
    created: int = 0
    requests_ok: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


async def post_predictions(session, url: str, fleet: Fleet, bodies, concurrency: int, duration: float) -> PostRun:
    """``concurrency`` keep-alive connections, each sending the next body as soon as its last
    answer is in, until the bodies run out or ``duration`` has passed. Body k comes from device
    k mod N, so rows spread over the devices."""
    run, order = PostRun(), iter(range(len(bodies)))
    headers = [fleet.auth(i) | {"Content-Type": "application/json"} for i in range(len(fleet.tokens))]
    started = time.perf_counter()
    deadline = started + duration

    async def connection() -> None:
        for index in order:  # shared by the connections: each body is sent once
            if time.perf_counter() > deadline:
                return
            records, body = bodies[index]
            await post_one(session, url, headers[index % len(headers)], records, body, run)

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    run.elapsed_s = time.perf_counter() - started
    return run


async def post_one(session, url: str, headers: dict, records: int, body: bytes, run: PostRun) -> None:
    run.records_sent += records
    sent = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            answer, status = await response.read(), response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        run.errors[type(exc).__name__] += 1
        return
    run.latencies_s.append(time.perf_counter() - sent)
    if status != 200:
        run.errors[f"http_{status}"] += 1
        return
    created = answer.count(b'"created"')  # one result per record; every record is new
    run.requests_ok += 1
    run.created += created
    if created != records:
        run.errors["not_created"] += records - created


async def measure_batches(args, base_url: str, fleet: Fleet, rows: Rows, check, new_meter) -> dict:
    url = base_url + PREDICTIONS_PATH
    async with client_session(args.concurrency) as session:
        await warm_up(session, url, fleet, args.concurrency, check)
    results = {}
    for batch in BATCH_SIZES:
        limit = min(len(rows.json), BATCH_1_MAX_ROWS) if batch == 1 else len(rows.json)
        bodies = make_bodies(rows, batch, limit)
        reset_predictions(check)
        # A fresh pool each time: uvicorn closes connections idle for 5 s, and reusing one it is
        # closing fails the request (ClientOSError), an artefact of the pause between measurements.
        async with client_session(args.concurrency) as session:
            meter = new_meter().begin()
            run = await post_predictions(session, url, fleet, bodies, args.concurrency, args.duration)
            cpu = meter.end()
        results[batch] = summarise_batch(batch, run, stored_predictions(check), cpu)
        print_batch(results[batch], len(bodies))
    return results


def client_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


async def warm_up(session, url: str, fleet: Fleet, concurrency: int, check) -> None:
    """Every batch size once per worker and connection, on rows of their own (not scored):
    imports, the connection pool and PostgreSQL's caches are warm before the first figure."""
    spare = make_rows(3 * concurrency * (1 + 100 + 1000), seed=11)
    for batch in BATCH_SIZES:
        bodies = make_bodies(spare, batch, len(spare.json))[: 3 * concurrency]
        run = await post_predictions(session, url, fleet, bodies, concurrency, 60)
        spare.json = spare.json[sum(records for records, _ in bodies) :]
        if run.errors:
            raise RuntimeError(f"warm-up with batches of {batch} failed: {dict(run.errors)}")
    reset_predictions(check)


def summarise_batch(batch: int, run: PostRun, stored: int, cpu: dict) -> dict:
    errors = collections.Counter(run.errors)
    if stored != run.created:
        errors["stored_count_mismatch"] += abs(stored - run.created)
    rows_per_s = stored / run.elapsed_s if run.elapsed_s else 0.0
    return {
        "batch": batch,
        "requests": run.requests_ok,
        "records_sent": run.records_sent,
        "rows_stored": stored,
        "elapsed_s": round(run.elapsed_s, 2),
        "rows_per_s": round(rows_per_s),
        "requests_per_s": round(run.requests_ok / run.elapsed_s, 1) if run.elapsed_s else 0.0,
        "p50_ms": _ms(percentile(run.latencies_s, 50)),
        "p99_ms": _ms(percentile(run.latencies_s, 99)),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        # CPU per 1,000 stored rows: what each party pays, less disturbed than rates by other load.
        "server_cpu_ms_per_1000_rows": _per_1000(cpu.get("server_cpu_s"), stored),
        "postgres_cpu_ms_per_1000_rows": _per_1000(cpu.get("postgres_cpu_s"), stored),
        "client_cpu_ms_per_1000_rows": _per_1000(cpu.get("client_cpu_s"), stored),
        **{name: value for name, value in cpu.items() if name.endswith("_cores")},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _per_1000(cpu_s: float | None, rows: int) -> float | None:
    return None if cpu_s is None or not rows else round(cpu_s * 1000 * 1000 / rows, 2)


def print_batch(figures: dict, bodies: int) -> None:
    print(
        f"batch {figures['batch']:>4}: {figures['rows_per_s']:>7,} rows/s ({figures['requests_per_s']} req/s), "
        f"{figures['rows_stored']:,} rows stored of {figures['records_sent']:,} sent in {figures['elapsed_s']} s "
        f"({bodies:,} bodies ready), errors {figures['errors']}"
        + (f" {figures['error_kinds']}" if figures["error_kinds"] else "")
    )
    print(f"  request time p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; " + cores_line(figures))
    print(
        f"  CPU ms per 1,000 rows: server {figures['server_cpu_ms_per_1000_rows']}, PostgreSQL "
        f"{figures['postgres_cpu_ms_per_1000_rows']}, load generator {figures['client_cpu_ms_per_1000_rows']}"
    )


# --- A) References: COPY and bulk_create -------------------------------------------------------------


def copy_rows(conn: psycopg.Connection, devices: list[str], values: list[tuple], per_transaction: int) -> float:
    """Binary COPY of prepared rows as the endpoint does it, committing every ``per_transaction``
    rows; device and received_at change every 1,000 rows. Returns the seconds taken."""
    device_ids = [uuid.UUID(device) for device in devices]
    started = time.perf_counter()
    for first in range(0, len(values), per_transaction):
        with conn.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
            copy.set_types(COPY_TYPES)
            for chunk in range(first, min(first + per_transaction, len(values)), COPY_ROWS_PER_TRANSACTION):
                device, now = device_ids[(chunk // COPY_ROWS_PER_TRANSACTION) % len(device_ids)], datetime.now(UTC)
                for row in values[chunk : chunk + COPY_ROWS_PER_TRANSACTION]:
                    copy.write_row((device, now, *row))
        conn.commit()
    return time.perf_counter() - started


def measure_copy(db_url: str, fleet: Fleet, rows: Rows, per_transaction: int, check, new_meter) -> dict:
    reset_predictions(check)
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")  # the backend exists before the meter starts
        conn.commit()
        meter = new_meter().begin()
        elapsed = copy_rows(conn, fleet.devices, rows.values, per_transaction)
        cpu = meter.end()  # before the backend exits with its CPU time
    stored = stored_predictions(check)
    return {
        "rows": stored,
        "elapsed_s": round(elapsed, 2),
        "rows_per_s": round(stored / elapsed),
        "errors": abs(stored - len(rows.values)),
        "postgres_cpu_ms_per_1000_rows": _per_1000(cpu.get("postgres_cpu_s"), stored),
        "client_cpu_ms_per_1000_rows": _per_1000(cpu.get("client_cpu_s"), stored),
        **{name: value for name, value in cpu.items() if name.endswith("_cores")},
    }


def measure_bulk_create(env: dict[str, str], data_dir: Path, fleet: Fleet, rows: Rows, count: int, check) -> dict:
    reset_predictions(check)
    path = data_dir / "bulk_rows.pickle"
    path.write_bytes(pickle.dumps((fleet.devices, rows.values[:count])))
    output = manage(env, "shell", "-c", BULK_CREATE_CODE.format(path=str(path), per_call=COPY_ROWS_PER_TRANSACTION))
    elapsed = float(next(line for line in output.splitlines() if line.startswith("BULK_CREATE_S ")).split()[1])
    path.unlink()
    stored = stored_predictions(check)
    return {"rows": stored, "elapsed_s": round(elapsed, 2), "rows_per_s": round(stored / elapsed)}


def measure_references(args, env, data_dir: Path, fleet: Fleet, rows: Rows, db_url: str, check, new_meter) -> dict:
    copy_txn = measure_copy(db_url, fleet, rows, COPY_ROWS_PER_TRANSACTION, check, new_meter)
    print_reference(f"COPY in {COPY_ROWS_PER_TRANSACTION:,}-row committed transactions (the ceiling)", copy_txn)
    copy_single = measure_copy(db_url, fleet, rows, len(rows.values), check, new_meter)
    print_reference("COPY of all rows in one transaction", copy_single)
    bulk = measure_bulk_create(env, data_dir, fleet, rows, min(args.bulk_rows, len(rows.values)), check)
    print_reference(f"Django bulk_create, {COPY_ROWS_PER_TRANSACTION:,} rows per call", bulk)
    reset_predictions(check)
    return {"copy_1000_per_txn": copy_txn, "copy_single_txn": copy_single, "bulk_create": bulk}


def print_reference(title: str, figures: dict) -> None:
    print(f"{title}: {figures['rows_per_s']:,} rows/s ({figures['rows']:,} rows in {figures['elapsed_s']} s)")
    if "client_cores" in figures:
        print(
            f"  CPU ms per 1,000 rows: PostgreSQL {figures['postgres_cpu_ms_per_1000_rows']}, "
            f"psycopg client {figures['client_cpu_ms_per_1000_rows']}; " + cores_line(figures)
        )


def run_predictions(args, env, data_dir: Path, fleet: Fleet, db_url: str, base_url: str, check, new_meter) -> dict:
    started = time.monotonic()
    rows = make_rows(args.rows)
    print(f"\nA) prediction logs: {len(rows.json):,} rows prepared in {time.monotonic() - started:.1f} s")
    print(
        f"   {len(fleet.tokens)} devices, {args.concurrency} concurrent keep-alive connections (aiohttp, one "
        f"process), at most {args.duration:g} s per batch size; the table is truncated before each measurement"
    )
    batches = asyncio.run(measure_batches(args, base_url, fleet, rows, check, new_meter))
    references = measure_references(args, env, data_dir, fleet, rows, db_url, check, new_meter)
    return {"batches": batches, **references}


# --- B) Packages ------------------------------------------------------------------------------------


@dataclass
class Archive:
    package_id: str
    kind: str
    device: int  # index into the fleet
    body: bytes
    sha256: str

    def headers(self, fleet: Fleet) -> dict[str, str]:
        return fleet.auth(self.device) | {
            "Content-Type": "application/gzip",
            "X-Package-Id": self.package_id,
            "X-Package-Kind": self.kind,
            "X-Package-Sha256": self.sha256,
        }


def sample_images(count: int, rng: np.random.Generator, image_format: str) -> list[tuple[str, bytes]]:
    """64×64 RGB images as (attachment name, bytes): a gradient with noise, so a PNG compresses
    like a photo rather than a flat fill; ``npy`` is the float32 array the edge client ships."""
    ramp = np.linspace(0, 160, 64, dtype=np.float32)
    images = []
    for _ in range(count):
        pixels = ramp[None, :, None] + ramp[:, None, None] * rng.uniform(0, 0.5, 3) + rng.normal(0, 20, (64, 64, 3))
        pixels = np.clip(pixels, 0, 255)
        if image_format == "npy":
            images.append(("image.npy", npy_bytes((pixels / 255).astype(np.float32))))
            continue
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="PNG")
        images.append(("image.png", buffer.getvalue()))
    return images


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def drift_event_files(samples: int, images: list, rng: np.random.Generator) -> tuple[list[str], list]:
    """A drift event and the samples quarantined with it, with the edge client's payload fields;
    each sample carries ``image.png`` (or ``image.npy``) and ``features.npy``."""
    now = datetime.now(UTC)
    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "created": iso(now),
        "detector": "ks_window",
        "kind": "distribution",
        "signal": "confidence",
        "scores": {"statistic": 0.41, "p_value": 0.0003},
        "params": {"window_size": 200, "alpha": 0.001},
        "window": {"start_sample": 1200, "end_sample": 1399},
        "model_version": MODEL_VERSION,
        "label": "7",
        "confidence": 0.52,
        "neighbour_distance": 1.93,
    }
    records, files = [event_id], [("event.json", _json_bytes(event))]
    for i in range(samples):
        sample_id = str(uuid.uuid4())
        sample = {
            "id": sample_id,
            "created": iso(now - timedelta(seconds=samples - i)),
            "event_id": event_id,
            "model_version": MODEL_VERSION,
            "label": str(i % 10),
            "confidence": round(float(rng.uniform(0.3, 0.7)), 6),
            "neighbour_distance": round(float(rng.uniform(1, 3)), 6),
            "reasons": ["ks_window"],
        }
        records.append(sample_id)
        image_name, image = images[rng.integers(len(images))]
        files += [
            (f"samples/{sample_id}.json", _json_bytes(sample)),
            (f"samples/{sample_id}/{image_name}", image),
            (f"samples/{sample_id}/features.npy", npy_bytes(rng.standard_normal(FEATURES, dtype=np.float32))),
        ]
    return records, files


def prediction_image_files(samples: int, images: list, rng: np.random.Generator) -> tuple[list[str], list]:
    """Images of predictions already logged: ``images/<prediction id>.png``, PNG only."""
    records = [str(uuid.uuid4()) for _ in range(samples)]
    files = [(f"images/{record}.png", images[rng.integers(len(images))][1]) for record in records]
    return records, files


LAYOUTS = {"drift_event": drift_event_files, "prediction_images": prediction_image_files}
LAYOUT_NOTES = {
    "drift_event": lambda args: f"event.json + per sample a JSON, 64×64 RGB image.{args.sample_image}, features.npy",
    "prediction_images": lambda args: "one 64×64 RGB PNG per prediction",
}


def build_archive(kind: str, fleet: Fleet, device: int, records: list[str], files: list) -> Archive:
    """A package as the edge client builds it (edge_client/sync.py): manifest first, listing every
    other member with its sha256 and size; deterministic pax tar.gz."""
    package_id = str(uuid.uuid5(PACKAGE_NAMESPACE, f"{kind}:" + ",".join(sorted(records))))
    manifest = {
        "format": 1,
        "id": package_id,
        "kind": kind,
        "device": fleet.devices[device],
        "created": iso(datetime.now(UTC)),
        "client_version": "0.1.0",
        "records": records,
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files
        ],
    }
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in [("manifest.json", _json_bytes(manifest)), *files]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tar.addfile(info, io.BytesIO(data))
    body = raw.getvalue()
    return Archive(package_id, kind, device, body, hashlib.sha256(body).hexdigest())


def _json_bytes(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build_archives(kind: str, fleet: Fleet, count: int, samples: int, image_format: str, seed=3) -> list[Archive]:
    rng = np.random.default_rng(seed)
    images = sample_images(64, rng, image_format if kind == "drift_event" else "png")
    patterns = [re.compile(pattern) for pattern in fleet.kinds[kind]]
    archives = []
    for i in range(count):
        records, files = LAYOUTS[kind](samples, images, rng)
        stray = [name for name, _ in files if not any(pattern.fullmatch(name) for pattern in patterns)]
        if stray:
            raise RuntimeError(f"the {kind} handler accepts {fleet.kinds[kind]}, not the members {stray[:3]}")
        archives.append(build_archive(kind, fleet, i % len(fleet.devices), records, files))
    return archives


def choose_kind(args, fleet: Fleet) -> str | None:
    if args.package_kind:
        return args.package_kind if args.package_kind in fleet.kinds else None
    return next((kind for kind in IMAGE_KINDS if kind in fleet.kinds), None)


async def upload(session, base_url: str, fleet: Fleet, archive: Archive) -> int:
    url = base_url + PACKAGES_PATH
    async with session.post(url, data=archive.body, headers=archive.headers(fleet)) as response:
        await response.read()
        return response.status


async def upload_all(base_url: str, fleet: Fleet, archives: list[Archive], concurrency: int) -> dict:
    statuses, order = collections.Counter(), iter(archives)

    async def connection(session) -> None:
        for archive in order:
            try:
                statuses[await upload(session, base_url, fleet, archive)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(connection(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"statuses": {str(status): n for status, n in statuses.items()}, "elapsed_s": elapsed}


def package_states(check) -> dict[str, int]:
    return dict(check.execute("SELECT status, count(*) FROM devices_package GROUP BY status").fetchall())


def wait_until_done(check, count: int, worker: subprocess.Popen, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = package_states(check)
        if states.get("processed", 0) + states.get("failed", 0) >= count or worker.poll() is not None:
            return states
        time.sleep(0.2)
    return package_states(check)


def drain_figures(check, count: int, elapsed_cpu: dict) -> dict:
    first, last, failed = check.execute(
        "SELECT min(processing_started_at), max(processed_at), count(*) FILTER (WHERE status = 'failed') "
        "FROM devices_package"
    ).fetchone()
    durations = [
        row[0]
        for row in check.execute(
            "SELECT extract(epoch FROM processed_at - processing_started_at) FROM devices_package "
            "WHERE processed_at IS NOT NULL"
        ).fetchall()
    ]
    done = len(durations)
    span = (last - first).total_seconds() if first and last else None
    worker_cpu = elapsed_cpu.get("worker_cpu_s")
    return {
        "packages": count,
        "processed": done - failed,
        "failed": failed,
        "span_s": None if span is None else round(span, 2),
        "packages_per_s": round(done / span, 2) if span else None,
        "processing_p50_ms": _ms(percentile([float(d) for d in durations], 50)),
        "processing_p95_ms": _ms(percentile([float(d) for d in durations], 95)),
        # Time inside process_package over the whole span; the rest is Celery between tasks.
        "in_task_share": round(sum(float(d) for d in durations) / span, 3) if span else None,
        "worker_cpu_ms_per_package": round(worker_cpu * 1000 / done, 1) if worker_cpu and done else None,
        **{name: value for name, value in elapsed_cpu.items() if name.endswith("_cores")},
    }


def first_failure(check) -> str | None:
    row = check.execute("SELECT error FROM devices_package WHERE status = 'failed' LIMIT 1").fetchone()
    return row and row[0]


@dataclass
class LiveSample:
    upload_s: float
    response_to_event_s: float | None = None
    processed_to_event_s: float | None = None
    response_to_processed_s: float | None = None
    status: str = "missing"


async def measure_live(base_url: str, fleet: Fleet, cookie: str, archives: list[Archive], spacing: float, check):
    """Upload one package at a time; time its live event on an operator's websocket."""
    arrivals: dict[str, tuple[float, float, dict]] = {}
    waiters: dict[str, asyncio.Future] = {}
    headers = {"Cookie": cookie}
    ws_url = base_url.replace("http://", "ws://") + LIVE_PATH
    async with ws_connect(ws_url, origin=base_url, additional_headers=headers, open_timeout=10) as live:
        reader = asyncio.create_task(read_events(live, arrivals, waiters))
        try:
            samples = await upload_one_by_one(base_url, fleet, archives, spacing, arrivals, waiters)
        finally:
            reader.cancel()
    processed = processed_times(check, [archive.package_id for archive in archives])
    for archive, (sample, response_wall) in zip(archives, samples, strict=True):
        arrival = arrivals.get(archive.package_id)
        if arrival and archive.package_id in processed:
            sample.status = arrival[2]["event"]
            sample.processed_to_event_s = arrival[1] - processed[archive.package_id]
            sample.response_to_processed_s = processed[archive.package_id] - response_wall
    return [sample for sample, _ in samples]


async def read_events(live, arrivals: dict, waiters: dict) -> None:
    async for message in live:
        perf, wall = time.perf_counter(), time.time()
        event = json.loads(message)
        package_id = event.get("data", {}).get("package_id")
        if event.get("event") in ("package.processed", "package.failed") and package_id:
            arrivals[package_id] = (perf, wall, event)
            waiter = waiters.get(package_id)
            if waiter and not waiter.done():
                waiter.set_result(perf)


async def upload_one_by_one(base_url, fleet, archives, spacing, arrivals, waiters) -> list:
    samples = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for archive in archives:
            waiters[archive.package_id] = asyncio.get_running_loop().create_future()
            sent = time.perf_counter()
            status = await upload(session, base_url, fleet, archive)
            response, response_wall = time.perf_counter(), time.time()
            sample = LiveSample(upload_s=response - sent, status=f"http_{status}" if status != 201 else "missing")
            if status == 201:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiters[archive.package_id]), timeout=10)
                if archive.package_id in arrivals:
                    sample.response_to_event_s = arrivals[archive.package_id][0] - response
            samples.append((sample, response_wall))
            await asyncio.sleep(spacing)
    return samples


def processed_times(check, package_ids: list[str]) -> dict[str, float]:
    """processed_at of each package from the database (microseconds; the event rounds to ms)."""
    rows = check.execute(
        "SELECT package_id::text, processed_at FROM devices_package WHERE package_id = ANY(%s::uuid[])",
        [package_ids],
    ).fetchall()
    return {package_id: moment.timestamp() for package_id, moment in rows if moment}


def operator_cookie(base_url: str, username: str, password: str) -> str:
    """Sign in through the admin login form, as a person would; return the Cookie header."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base_url + "/admin/login/", timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = {"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"}
    opener.open(base_url + "/admin/login/", data=urllib.parse.urlencode(form).encode(), timeout=10).read()
    cookies = {cookie.name: cookie.value for cookie in jar}
    if "sessionid" not in cookies:
        raise RuntimeError(f"the admin login as {username} set no session cookie")
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def live_figures(samples: list[LiveSample]) -> dict:
    def stats(values: list[float]) -> dict:
        return {
            "p50_ms": _ms(percentile(values, 50)),
            "p95_ms": _ms(percentile(values, 95)),
            "max_ms": _ms(max(values, default=None)),
        }

    received = [s for s in samples if s.response_to_event_s is not None and s.processed_to_event_s is not None]
    return {
        "uploads": len(samples),
        "events_received": len(received),
        "statuses": dict(collections.Counter(s.status for s in samples)),
        "upload": stats([s.upload_s for s in samples]),
        "response_to_event": stats([s.response_to_event_s for s in received]),
        "response_to_processed": stats([s.response_to_processed_s for s in received]),
        "processed_to_event": stats([s.processed_to_event_s for s in received]),
    }


def run_packages(args, env, data_dir: Path, fleet: Fleet, base_url: str, check, new_meter) -> dict:
    kind = choose_kind(args, fleet)
    if kind is None:
        wanted = args.package_kind or " or ".join(IMAGE_KINDS)
        print(f"\nB) packages: SKIPPED, no {wanted} handler is registered (registered: {sorted(fleet.kinds)})")
        return {"skipped": f"no {wanted} handler registered", "registered_kinds": sorted(fleet.kinds)}
    started = time.monotonic()
    archives = build_archives(kind, fleet, args.packages + args.live_packages, args.samples, args.sample_image)
    batch, live = archives[: args.packages], archives[args.packages :]
    mean_kb = sum(len(archive.body) for archive in archives) / len(archives) / 1024
    print(
        f"\nB) packages: {len(archives)} {kind} archives of {args.samples} samples ({LAYOUT_NOTES[kind](args)}) "
        f"built in {time.monotonic() - started:.1f} s, {mean_kb:.0f} KiB each"
    )
    node = f"bench-ingest-{os.getpid()}@localhost"
    control = Celery(broker=env["REDIS_URL"])
    with running_worker(env, node, data_dir / "worker.log", args.worker_pool, args.worker_concurrency) as worker:
        wait_for_worker(control, node, worker, data_dir / "worker.log")
        drain = drain_queue(args, base_url, fleet, batch, control, node, worker, check, new_meter)
        if first_failure(check):
            print(f"  first failure: {first_failure(check)}")
        cookie = operator_cookie(base_url, "bench", fleet.password)
        samples = asyncio.run(measure_live(base_url, fleet, cookie, live, args.live_spacing, check))
        live_result = live_figures(samples)
        print_live(live_result, args.live_spacing)
    print_worker_errors(data_dir / "worker.log")
    return {
        "kind": kind,
        "samples_per_package": args.samples,
        "sample_image": args.sample_image if kind == "drift_event" else "png",
        "archive_kib": round(mean_kb, 1),
        "drain": drain,
        "live": live_result,
    }


def drain_queue(args, base_url, fleet, archives, control: Celery, node: str, worker, check, new_meter) -> dict:
    """Upload with the worker's consumer cancelled, then let it drain the queue alone."""
    control.control.cancel_consumer("ingest", destination=[node], reply=True, timeout=5)
    uploaded = asyncio.run(upload_all(base_url, fleet, archives, args.concurrency))
    print(
        f"  uploaded {len(archives)} packages with the worker paused in {uploaded['elapsed_s']:.1f} s "
        f"({len(archives) / uploaded['elapsed_s']:.1f} packages/s over {args.concurrency} connections), "
        f"answers {uploaded['statuses']}"
    )
    meter = new_meter(worker=worker.pid).begin()
    control.control.add_consumer("ingest", destination=[node], reply=True, timeout=5)
    states = wait_until_done(check, len(archives), worker, timeout=60 + 2 * len(archives))
    figures = drain_figures(check, len(archives), meter.end())
    figures |= {
        "upload_statuses": uploaded["statuses"],
        "upload_per_s": round(len(archives) / uploaded["elapsed_s"], 1),
    }
    figures["states"] = states
    figures |= {"worker_concurrency": args.worker_concurrency, "worker_pool": args.worker_pool}
    print(
        f"  one worker (-c {args.worker_concurrency}, {args.worker_pool}): {figures['packages_per_s']} packages/s, "
        f"{figures['processed']} processed and "
        f"{figures['failed']} failed in {figures['span_s']} s from the first claim to the last processed_at"
    )
    print(
        f"  per package in process_package: p50 {figures['processing_p50_ms']} ms, "
        f"p95 {figures['processing_p95_ms']} ms; "
        f"share of the span inside tasks {figures['in_task_share']}; worker CPU {figures['worker_cpu_ms_per_package']} "
        "ms per package"
    )
    print("  " + cores_line(figures))
    return figures


def print_live(figures: dict, spacing: float) -> None:
    print(
        f"  live feed: {figures['uploads']} packages uploaded one at a time ({spacing:g} s apart), "
        f"{figures['events_received']} events received, {figures['statuses']}"
    )
    for name, title in (
        ("upload", "upload request (201)"),
        ("response_to_event", "upload answer -> live event"),
        ("response_to_processed", "upload answer -> processed_at"),
        ("processed_to_event", "processed_at -> live event"),
    ):
        values = figures[name]
        print(f"    {title:<32} p50 {values['p50_ms']} ms  p95 {values['p95_ms']} ms  max {values['max_ms']} ms")


def print_worker_errors(log_path: Path) -> None:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]
    if lines:
        print(f"  worker log: {len(lines)} error lines, first: {lines[0][:300]}")


# --- Verdicts and report ----------------------------------------------------------------------------


def verdicts(result: dict) -> dict:
    checks = {}
    predictions = result.get("predictions")
    if predictions:
        batch_1000 = predictions["batches"][1000]["rows_per_s"]
        ceiling = predictions["copy_1000_per_txn"]["rows_per_s"]
        errors = sum(figures["errors"] for figures in predictions["batches"].values())
        checks["batch_1000_vs_copy_ceiling"] = batch_1000 >= TARGET_COPY_FRACTION * ceiling
        checks["predictions_zero_errors"] = errors == 0
    packages = result.get("packages")
    if packages and "skipped" not in packages:
        drain, live = packages["drain"], packages["live"]
        checks["packages_per_s_per_worker"] = (drain["packages_per_s"] or 0) >= TARGET_PACKAGES_PER_S
        checks["packages_zero_failures"] = drain["failed"] == 0 and drain["processed"] == drain["packages"]
        delivery = live["processed_to_event"]["max_ms"]
        checks["live_event_under_1s"] = (
            live["events_received"] == live["uploads"]
            and delivery is not None
            and delivery < TARGET_LIVE_DELIVERY_S * 1000
        )
    return checks


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_predictions(predictions: dict, checks: dict) -> dict:
    batches = predictions["batches"]
    ceiling = predictions["copy_1000_per_txn"]["rows_per_s"]
    single = predictions["copy_single_txn"]["rows_per_s"]
    ratio, ratio_single = batches[1000]["rows_per_s"] / ceiling, batches[1000]["rows_per_s"] / single
    print("\nA) rows/s: " + ", ".join(f"batch {b}: {batches[b]['rows_per_s']:,}" for b in BATCH_SIZES))
    print(
        f"   references: COPY 1,000-row transactions {ceiling:,}, single COPY {single:,}, "
        f"bulk_create {predictions['bulk_create']['rows_per_s']:,} rows/s"
    )
    print(
        f"   batch 1,000 / COPY ceiling (1,000-row transactions) = {ratio:.2f} -> target >= {TARGET_COPY_FRACTION} "
        f"{_verdict(checks['batch_1000_vs_copy_ceiling'])}; against the single COPY: {ratio_single:.2f}"
    )
    print(
        "   zero errors (stored rows = rows sent, every record 'created'): "
        + _verdict(checks["predictions_zero_errors"])
    )
    return {"batch_1000_over_copy_ceiling": round(ratio, 3), "batch_1000_over_single_copy": round(ratio_single, 3)}


def report_packages(packages: dict, checks: dict) -> None:
    drain, live = packages["drain"], packages["live"]
    print(
        f"\nB) {drain['packages_per_s']} packages/s per worker ({packages['kind']}, {packages['samples_per_package']} "
        f"images each) -> target >= {TARGET_PACKAGES_PER_S:g} {_verdict(checks['packages_per_s_per_worker'])}; "
        f"failures: {drain['failed']} {_verdict(checks['packages_zero_failures'])}"
    )
    delivery, end_to_end = live["processed_to_event"], live["response_to_event"]
    print(
        f"   live event after processing ends: p50 {delivery['p50_ms']} ms, p95 {delivery['p95_ms']} ms, max "
        f"{delivery['max_ms']} ms ({live['events_received']}/{live['uploads']} received) -> target < "
        f"{TARGET_LIVE_DELIVERY_S:g} s {_verdict(checks['live_event_under_1s'])}"
    )
    print(
        f"   upload answer -> live event: p50 {end_to_end['p50_ms']} ms, p95 {end_to_end['p95_ms']} ms, "
        f"max {end_to_end['max_ms']} ms"
    )


def report(args, result: dict) -> bool:
    checks = verdicts(result)
    line = {"benchmark": "ingest", "cpu_count": os.cpu_count(), "background_cores": result["background_cores"]}
    line |= {"workers": args.workers, "devices": args.devices, "concurrency": args.concurrency, "server_env": args.env}
    line["data_dir_base"] = args.tmp_dir or tempfile.gettempdir()
    if result.get("predictions"):
        line["predictions"] = result["predictions"] | report_predictions(result["predictions"], checks)
        line["predictions"]["batches"] = {str(b): f for b, f in result["predictions"]["batches"].items()}
    if result.get("packages"):
        if "skipped" not in result["packages"]:
            report_packages(result["packages"], checks)
        line["packages"] = result["packages"]
    line |= {"checks": checks, "targets_met": all(checks.values())}
    print(json.dumps(line, default=str))
    return line["targets_met"]


# --- Entry point ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "predictions", "packages"), default="all")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--worker-concurrency", type=int, default=1, help="pool processes of the one worker")
    parser.add_argument(
        "--worker-pool", choices=("prefork", "threads", "solo"), default="prefork", help="Celery pool of the worker"
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument("--rows", type=int, default=450_000, help="prediction rows prepared (and COPY'd)")
    parser.add_argument("--duration", type=float, default=15.0, help="at most this many seconds per batch size")
    parser.add_argument("--bulk-rows", type=int, default=50_000, help="rows for the bulk_create reference")
    parser.add_argument("--packages", type=int, default=200, help="packages drained by the worker")
    parser.add_argument("--samples", type=int, default=20, help="sample images per package")
    parser.add_argument("--live-packages", type=int, default=30, help="packages uploaded one at a time")
    parser.add_argument("--live-spacing", type=float, default=0.25, help="seconds between those uploads")
    parser.add_argument("--package-kind", choices=IMAGE_KINDS, help="default: the first of them registered")
    parser.add_argument(
        "--sample-image",
        choices=("png", "npy"),
        default="png",
        help="drift samples' image attachment: image.png, or image.npy as the edge client sends (rendered to PNG)",
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S", help="wait up to S s for other load to stop first"
    )
    parser.add_argument(
        "--tmp-dir",
        help="where the temporary DATA_DIR (the storages: uploaded archives, images) is made; default: the "
        "system's temp dir. /dev/shm separates the disk's cost of creating files from the processing",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="without the database number")
    parser.add_argument("--redis-db", type=int, default=14, help="flushed at start and end (not 15: the tests')")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for server and worker"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL role allowed to create databases; the scratch database is made beside it",
    )
    return parser.parse_args(argv)


def wait_for_quiet(limit_s: float, quiet_cores: float = 0.3) -> float | None:
    """Cores other processes keep busy; on a shared machine, wait up to ``limit_s`` for them to
    fall to ``quiet_cores`` (the figures share the cores with whatever else runs)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = background_cores()
        if busy is None or busy <= quiet_cores or time.monotonic() >= deadline:
            return busy
        print(f"other processes keep {busy} cores busy; waiting for a quieter machine (--wait-quiet {limit_s:g})")


def run_benchmark(args, env: dict[str, str], db: str, fleet: Fleet, data_dir: Path) -> dict:
    result = {}
    with (
        psycopg.connect(db, autocommit=True) as check,
        running_server(env, args.workers, data_dir / "server.log") as server,
    ):
        base_url, server_pid = server
        print(
            f"server: uvicorn, {args.workers} worker(s), {base_url}, scratch database {db.rsplit('/', 1)[1]}, "
            f"DATA_DIR {data_dir}"
        )
        roots = {"server": server_pid, "postgres": postgres_pid(check)}
        filters = {"postgres": postgres_processes_of(db.rsplit("/", 1)[1])}

        def new_meter(**more_roots) -> Meter:
            return Meter(roots | more_roots, filters)

        if args.part in ("all", "predictions"):
            result["predictions"] = run_predictions(args, env, data_dir, fleet, db, base_url, check, new_meter)
        if args.part in ("all", "packages"):
            result["packages"] = run_packages(args, env, data_dir, fleet, base_url, check, new_meter)
    print_server_errors(data_dir / "server.log")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    redis_url = f"{args.redis_url.rstrip('/')}/{args.redis_db}"
    with (
        tempfile.TemporaryDirectory(prefix="sphere-bench-ingest-", dir=args.tmp_dir) as data_dir,
        scratch_database(args.database_url) as db,
        flushed_redis(redis_url),
    ):
        env = sphere_env(db, data_dir, redis_url, args.env)
        fleet = prepare_fleet(env, args.devices)
        print(f"created {len(fleet.devices)} devices with tokens; package kinds registered: {sorted(fleet.kinds)}")
        background = wait_for_quiet(args.wait_quiet)
        print(f"before the server started, other processes kept {background} of {os.cpu_count()} cores busy")
        result = run_benchmark(args, env, db, fleet, Path(data_dir)) | {"background_cores": background}
    return 0 if report(args, result) else 1


if __name__ == "__main__":
    sys.exit(main())
