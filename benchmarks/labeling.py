"""Labeling at scale: the queue's next task and a label with 100,000 tasks pending (in-process
service calls and over HTTP), the labeling page, and a snapshot + export of 100,000 labels.

Run from the project root::

    .venv/bin/python benchmarks/labeling.py [--pending 100000] [--labeled 100000] [--samples 300]
                                            [--workers 1] [--sqlite] [--skip-export]

It starts and stops everything it measures, on loopback: a scratch PostgreSQL database
``sphere_bench_labeling`` (created, migrated, dropped at the end; ``--sqlite`` uses a SQLite file
in a temporary DATA_DIR instead), ``uvicorn sphere.asgi:application`` with the embedded channel
layer, and child ``manage.py shell`` processes for the seeding, the in-process measurements, the
snapshot and the export. Seeded: ``--pending`` pending tasks (bulk) and ``--labeled`` labeled
tasks, each with a label and a small PNG in the drift_images storage.

Figures, each against its target:

1. Serving the next task, in-process (``services.next_task``, the claim of a fresh lease),
   p50/p95 — target p95 < 50 ms. Measured without a class set (as the page does by default) and
   with one.
2. Recording a label, in-process (``services.record_label``), p50/p95 — target p95 < 50 ms.
   The live queue counts are not part of it any more: a label marks them dirty and the
   ``labeling.publish_counts`` task counts them at most once a second; its cost is printed
   beside (no target: a worker pays it, not the labeler). No worker runs here: the tasks the
   labels enqueue wait in the scratch data directory's broker folder.
3. Over HTTP as a signed-in labeler: ``GET /labeling/`` (the queue page, which serves the next
   task) — target p95 < 500 ms; ``POST /labeling/tasks/<id>/label/`` — target p95 < 50 ms.
   Then ``POST /api/v1/snapshots/`` as the same user: 202 with the request to poll (no target;
   the build is the worker's).
4. A snapshot of the ``--labeled`` labels and its export, each in its own child process: wall
   time, and the child's peak RSS (``os.wait4``) beside a child that only starts Django and
   imports the same modules. No target: the figures show the cost and that memory does not grow
   with the snapshot. (The snapshot child runs ``create_snapshot``, the work of the
   ``labeling.create_snapshot`` task.)

The last line printed is one JSON object with every figure. Exit status 0 when every target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import requests
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.fleet_heartbeats import (  # noqa: E402
    background_cores,
    database_url,
    percentile,
    print_server_errors,
    running_server,
)

DB_NAME = "sphere_bench_labeling"
TARGET_NEXT_P95_MS = 50.0
TARGET_LABEL_P95_MS = 50.0
TARGET_PAGE_P95_MS = 500.0
REQUEST_TIMEOUT_S = 30.0
PAGE_PATH = "/labeling/"

# Runs inside `manage.py shell`: two staff labelers (one in-process, one over HTTP), the queue's
# pending tasks and the labeled tasks behind the snapshot, bulk-inserted, and one small PNG per
# labeled task in the drift_images storage. Prints SEED <json>.
SEED_CODE = r"""
import io, json, os, time
import numpy as np
from PIL import Image
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.storage import storages
from django.utils import timezone
from labeling.models import ClassSet, Label, LabelTask, TaskSource, TaskStatus

started = time.perf_counter()
users = {{}}
for name in ("bench-inproc", "bench-http"):
    user = get_user_model().objects.create_user(name, password={password!r}, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="labeling"))
    users[name] = user.pk
digits = ClassSet.objects.get(name="digits")
rng = np.random.default_rng(5)
now = timezone.now()
BATCH = 5000

def task(prefix, i, status, vector, draw, with_image):
    confidence = round(0.4 + 0.3 * draw, 6)
    label = str(i % 10)
    return LabelTask(
        key=f"bench:{{prefix}}:{{i}}", source=TaskSource.UNCERTAIN, class_set=digits, status=status,
        model_version="digits@3", predicted_label=label, confidence=confidence,
        probabilities={{label: confidence, str((i + 1) % 10): round(1 - confidence, 6)}},
        features=vector.tobytes(), uncertainty=1 - confidence, priority=1 - confidence,
        image_area="drift_images" if with_image else "", image_key=f"bench/{{i}}.png" if with_image else "",
    )

def seed(prefix, count, status, with_image):
    for first in range(0, count, BATCH):
        n = min(BATCH, count - first)
        vectors = rng.standard_normal((n, 64), dtype=np.float32)
        draws = rng.random(n).tolist()
        rows = [task(prefix, first + j, status, vectors[j], draws[j], with_image) for j in range(n)]
        LabelTask.objects.bulk_create(rows, batch_size=1000)

seed("pending", {pending}, TaskStatus.PENDING, False)
pending_s = time.perf_counter() - started
seed("labeled", {labeled}, TaskStatus.DONE, True)
done = LabelTask.objects.filter(status=TaskStatus.DONE).values_list("pk", flat=True).iterator(chunk_size=BATCH)
batch = []
for pk in done:
    batch.append(Label(task_id=pk, value=str(pk % 10), labeled_by_id=users["bench-inproc"], created=now))
    if len(batch) == BATCH:
        Label.objects.bulk_create(batch)
        batch = []
Label.objects.bulk_create(batch)
tasks_s = time.perf_counter() - started

# Real PNGs (28x28 grey, as the digits model sees them), 256 distinct ones written round-robin.
pngs = []
for n in range(256):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(out, "PNG")
    pngs.append(out.getvalue())
folder = os.path.join(storages["drift_images"].location, "bench")
os.makedirs(folder, exist_ok=True)
image_bytes = 0
for i in range({labeled}):
    with open(os.path.join(folder, f"{{i}}.png"), "wb") as handle:
        image_bytes += handle.write(pngs[i % 256])
print("SEED " + json.dumps({{
    "users": users, "pending_s": round(pending_s, 1), "tasks_and_labels_s": round(tasks_s, 1),
    "images_s": round(time.perf_counter() - started - tasks_s, 1), "image_bytes": image_bytes,
}}))
"""

# Runs inside `manage.py shell`: the services the page calls, timed one call at a time.
IN_PROCESS_CODE = r"""
import json, time
from django.contrib.auth import get_user_model
from labeling import services
from labeling.models import ClassSet

user = get_user_model().objects.get(username="bench-inproc")
digits = ClassSet.objects.get(name="digits")
figures = {{}}
for name, class_set in (("any_class_set", None), ("one_class_set", digits)):
    serve, label = [], []
    for n in range({warmup} + {samples}):
        started = time.perf_counter()
        task = services.next_task(user, class_set)
        served = time.perf_counter()
        services.record_label(user, task.pk, str(n % 10), seconds=1.0)
        if n >= {warmup}:
            serve.append(served - started)
            label.append(time.perf_counter() - served)
    figures[name] = {{"next_task_s": serve, "record_label_s": label}}
# Off the request path since the counts are debounced: what labeling.publish_counts costs the
# worker, at most once a second (the live pages get the counts without a listener here).
counting = []
for n in range({warmup} + {samples} // 10):
    started = time.perf_counter()
    services.publish_queue_counts()
    if n >= {warmup}:
        counting.append(time.perf_counter() - started)
figures["worker"] = {{"publish_counts_s": counting}}
print("INPROC " + json.dumps(figures))
"""

ANALYZE_CODE = r"""
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("ANALYZE")
print("ANALYZED {}")
"""

# Each runs alone in a child process whose peak RSS is read with os.wait4.
BASELINE_CODE = r"""
import json
from labeling import export, snapshots
from labeling.models import ClassSet
ClassSet.objects.get(name="digits")
print("BASELINE " + json.dumps({}))
"""

SNAPSHOT_CODE = r"""
import json, time
from labeling.models import ClassSet
from labeling.snapshots import create_snapshot
started = time.perf_counter()
snapshot = create_snapshot(ClassSet.objects.get(name="digits"), note="benchmark")
seconds = time.perf_counter() - started
print("SNAPSHOT " + json.dumps({"id": snapshot.pk, "items": snapshot.item_count, "seconds": seconds}))
"""

EXPORT_CODE = r"""
import json, time
from labeling import export
from labeling.models import DatasetSnapshot, ExportStatus
pk = DatasetSnapshot.objects.latest("version").pk
DatasetSnapshot.objects.filter(pk=pk).update(export_status=ExportStatus.PENDING)
started = time.perf_counter()
outcome = export.export_snapshot(pk)  # what the worker's labeling.export_snapshot task runs
seconds = time.perf_counter() - started
snapshot = DatasetSnapshot.objects.get(pk=pk)
print("EXPORT " + json.dumps({"outcome": outcome, "seconds": seconds, "bytes": snapshot.export_size,
                              "key": snapshot.export_key, "error": snapshot.export_error}))
"""


# --- Environment ----------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(args, data_dir: Path):
    """The database URL: a fresh PostgreSQL database dropped afterwards, or a SQLite file."""
    if args.sqlite:
        yield f"sqlite:///{data_dir / 'sphere.sqlite3'}"
        return
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        # A run that was killed leaves its database behind: start clean.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    try:
        yield database_url(args.database_url, DB_NAME)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        print(f"dropped scratch database {DB_NAME}")


def sphere_env(db_url: str, data_dir: Path, extra: list[str]) -> dict[str, str]:
    """Scratch database and data dir, embedded channel layer and broker, storages on local disk."""
    dropped = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "S3_BUCKET")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(
        DATABASE_URL=db_url,
        DATA_DIR=str(data_dir),
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",  # DEBUG keeps every SQL query in memory and would skew the figures
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="sphere.settings",
    )
    env.update(item.split("=", 1) for item in extra)
    return env


def shell(env: dict[str, str], code: str, tag: str, log_dir: Path) -> tuple[dict, int]:
    """Run ``code`` in ``manage.py shell``; return the JSON it printed after ``tag`` and the
    child's peak RSS in KiB (ru_maxrss of that process alone, read with os.wait4)."""
    out_path, err_path = log_dir / f"{tag.lower()}.out", log_dir / f"{tag.lower()}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    output = out_path.read_text()
    if child.returncode != 0:
        raise RuntimeError(f"manage.py shell ({tag}) failed:\n{err_path.read_text()[-3000:]}")
    line = next((line for line in output.splitlines() if line.startswith(f"{tag} ")), None)
    if line is None:
        raise RuntimeError(f"manage.py shell ({tag}) printed no {tag} line:\n{output[-2000:]}")
    return json.loads(line.removeprefix(f"{tag} ")), usage.ru_maxrss


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, capture_output=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{result.stderr.decode()[-3000:]}")


# --- Measurements ---------------------------------------------------------------------------------


def stats_ms(seconds: list[float]) -> dict:
    return {
        "n": len(seconds),
        "p50_ms": _ms(percentile(seconds, 50)),
        "p95_ms": _ms(percentile(seconds, 95)),
        "max_ms": _ms(max(seconds, default=None)),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def in_process(env: dict[str, str], args, log_dir: Path) -> dict:
    code = IN_PROCESS_CODE.format(samples=args.samples, warmup=args.warmup)
    figures, _ = shell(env, code, "INPROC", log_dir)
    return {
        scope: {name.removesuffix("_s"): stats_ms(values) for name, values in calls.items()}
        for scope, calls in figures.items()
    }


def signed_in(base_url: str, username: str, password: str) -> requests.Session:
    """A labeler's browser session, signed in through the admin login form."""
    session = requests.Session()
    page = session.get(f"{base_url}/admin/login/", timeout=REQUEST_TIMEOUT_S).text
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = {"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"}
    session.post(f"{base_url}/admin/login/", data=form, timeout=REQUEST_TIMEOUT_S)
    if "sessionid" not in session.cookies:
        raise RuntimeError(f"the admin login as {username} set no session cookie")
    return session


def over_http(base_url: str, password: str, args, query: str) -> dict:
    """The labeler's loop: open the queue page (which leases the next task), click a class."""
    session = signed_in(base_url, "bench-http", password)
    pages, labels, failures = [], [], []
    for n in range(args.warmup + args.samples):
        started = time.perf_counter()
        page = session.get(base_url + PAGE_PATH + query, timeout=REQUEST_TIMEOUT_S)
        shown = time.perf_counter()
        form = re.search(r'action="/labeling/tasks/(\d+)/label/"', page.text)
        if page.status_code != 200 or form is None:
            failures.append(f"GET {PAGE_PATH}{query}: {page.status_code}")
            continue
        fields = {
            "csrfmiddlewaretoken": re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1),
            "served": re.search(r'name="served" value="([^"]+)"', page.text).group(1),
            "value": str(n % 10),
        }
        answer = session.post(
            f"{base_url}/labeling/tasks/{form.group(1)}/label/",
            data=fields,
            allow_redirects=False,
            timeout=REQUEST_TIMEOUT_S,
        )
        done = time.perf_counter()
        if answer.status_code != 302:
            failures.append(f"POST label: {answer.status_code}")
        if n >= args.warmup:
            pages.append(shown - started)
            labels.append(done - shown)
    return {"page": stats_ms(pages), "label": stats_ms(labels), "failures": failures[:5], "failed": len(failures)}


SNAPSHOT_REQUESTS = 10


def snapshot_requests_over_http(base_url: str, password: str) -> dict:
    """``POST /api/v1/snapshots/``: the answer (202 and the request to poll) is all the caller waits for."""
    session = signed_in(base_url, "bench-http", password)
    headers = {"X-CSRFToken": session.cookies["csrftoken"], "Referer": base_url + "/"}
    times, statuses = [], []
    for _ in range(SNAPSHOT_REQUESTS):
        started = time.perf_counter()
        answer = session.post(
            f"{base_url}/api/v1/snapshots/", json={"class_set": "digits"}, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        times.append(time.perf_counter() - started)
        statuses.append(answer.status_code)
    return {**stats_ms(times), "statuses": sorted(set(statuses))}


def snapshot_and_export(env: dict[str, str], log_dir: Path, skip_export: bool) -> dict:
    _, baseline_kib = shell(env, BASELINE_CODE, "BASELINE", log_dir)
    made, snapshot_kib = shell(env, SNAPSHOT_CODE, "SNAPSHOT", log_dir)
    result = {
        "baseline_rss_mib": round(baseline_kib / 1024, 1),
        "snapshot": {
            "items": made["items"],
            "seconds": round(made["seconds"], 2),
            "peak_rss_mib": round(snapshot_kib / 1024, 1),
            "over_baseline_mib": round((snapshot_kib - baseline_kib) / 1024, 1),
        },
    }
    if not skip_export:
        exported, export_kib = shell(env, EXPORT_CODE, "EXPORT", log_dir)
        result["export"] = {
            "outcome": exported["outcome"],
            "error": exported["error"],
            "seconds": round(exported["seconds"], 2),
            "archive_mib": round((exported["bytes"] or 0) / 2**20, 1),
            "peak_rss_mib": round(export_kib / 1024, 1),
            "over_baseline_mib": round((export_kib - baseline_kib) / 1024, 1),
        }
    return result


# --- Report -----------------------------------------------------------------------------------------


SCOPES = {"any_class_set": "no class set, the page's default", "one_class_set": "class set digits"}
# (section, name, title, target p95 in ms)
MEASURES = (
    ("in_process", "next_task", "next_task", TARGET_NEXT_P95_MS),
    ("in_process", "record_label", "record_label", TARGET_LABEL_P95_MS),
    ("http", "page", f"GET {PAGE_PATH} (serves the next task)", TARGET_PAGE_P95_MS),
    ("http", "label", "POST /labeling/tasks/<id>/label/", TARGET_LABEL_P95_MS),
)


def checks_of(result: dict) -> dict[str, bool]:
    checks = {}
    for scope in SCOPES:
        for section, name, _, target in MEASURES:
            p95 = result[section][scope][name]["p95_ms"]
            checks[f"{section}_{name}_p95_{scope}"] = p95 is not None and p95 < target
        checks[f"http_zero_failures_{scope}"] = result["http"][scope]["failed"] == 0
    checks["snapshot_request_accepted"] = result["http"]["snapshot_request"]["statuses"] == [202]
    export = result["snapshot_export"].get("export")
    if export is not None:
        checks["export_done"] = export["outcome"] == "done"
    return checks


def report(args, result: dict) -> bool:
    checks = checks_of(result)
    print(f"\nqueue: {args.pending:,} pending tasks; {args.labeled:,} labeled tasks behind the snapshot")
    print(f"HTTP: uvicorn with {args.workers} worker(s) on loopback, a labeler signed in; times seen by the client")
    for scope, scope_title in SCOPES.items():
        print(f"{scope_title}:")
        for section, name, title, target in MEASURES:
            figures = result[section][scope][name]
            where = "in-process" if section == "in_process" else "HTTP"
            verdict = "PASS" if checks[f"{section}_{name}_p95_{scope}"] else "FAIL"
            print(
                f"  {where:<10} {title:<40} p50 {figures['p50_ms']:>7} ms  p95 {figures['p95_ms']:>7} ms  "
                f"max {figures['max_ms']:>7} ms  (n={figures['n']}) -> p95 < {target:g} ms {verdict}"
            )
        failures = result["http"][scope]
        print(f"  HTTP failures: {failures['failed']} {failures['failures']}")
    counting = result["in_process"]["worker"]["publish_counts"]
    print(
        f"labeling.publish_counts (the worker, at most once a second): p50 {counting['p50_ms']} ms  "
        f"p95 {counting['p95_ms']} ms  (n={counting['n']})"
    )
    asked = result["http"]["snapshot_request"]
    print(
        f"POST /api/v1/snapshots/ -> {asked['statuses']}: p50 {asked['p50_ms']} ms  p95 {asked['p95_ms']} ms  "
        f"(n={asked['n']}; the build is the worker's)"
    )
    snap = result["snapshot_export"]
    made = snap["snapshot"]
    print(
        f"snapshot of {made['items']:,} labels: {made['seconds']} s, peak RSS {made['peak_rss_mib']} MiB "
        f"({made['over_baseline_mib']:+} MiB over a child that only starts Django: {snap['baseline_rss_mib']} MiB)"
    )
    export = snap.get("export")
    if export:
        print(
            f"export: {export['outcome']} in {export['seconds']} s, archive {export['archive_mib']} MiB, peak RSS "
            f"{export['peak_rss_mib']} MiB ({export['over_baseline_mib']:+} MiB over the baseline)"
            + (f", error: {export['error']}" if export["error"] else "")
        )
    line_json = {
        "benchmark": "labeling",
        "database": "sqlite" if args.sqlite else "postgresql",
        "pending": args.pending,
        "labeled": args.labeled,
        "samples": args.samples,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        **result,
        "checks": checks,
        "targets_met": all(checks.values()),
    }
    print(json.dumps(line_json))
    return line_json["targets_met"]


# --- Entry point ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=100_000, help="pending tasks in the queue")
    parser.add_argument("--labeled", type=int, default=100_000, help="labeled tasks (with images) to snapshot")
    parser.add_argument("--samples", type=int, default=300, help="measured calls of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured calls first")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    parser.add_argument("--skip-export", action="store_true", help="snapshot only")
    parser.add_argument("--tmp-dir", help="where the temporary DATA_DIR is made; default: the system's")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every process"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL role allowed to create databases; the scratch database is made beside it",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sphere-bench-labeling-", dir=args.tmp_dir) as tmp:
        data_dir = Path(tmp)
        with scratch_database(args, data_dir) as db:
            env = sphere_env(db, data_dir, args.env)
            password = secrets.token_urlsafe(16)
            started = time.perf_counter()
            migrate(env)
            seeded, _ = shell(
                env, SEED_CODE.format(password=password, pending=args.pending, labeled=args.labeled), "SEED", data_dir
            )
            # A live database is analysed by autovacuum as it fills; a bulk load needs it now, or
            # the planner works from an empty table's statistics.
            shell(env, ANALYZE_CODE, "ANALYZED", data_dir)
            print(f"migrated, seeded and analysed in {time.perf_counter() - started:.0f} s: {seeded}")
            background = background_cores()
            print(f"other processes keep {background} of {os.cpu_count()} cores busy")
            result = {"seed": seeded, "background_cores": background}
            result["in_process"] = in_process(env, args, data_dir)
            with running_server(env, args.workers, data_dir / "server.log") as (base_url, _):
                result["http"] = {
                    "any_class_set": over_http(base_url, password, args, ""),
                    "one_class_set": over_http(base_url, password, args, "?class_set=digits"),
                    "snapshot_request": snapshot_requests_over_http(base_url, password),
                }
            print_server_errors(data_dir / "server.log")
            result["snapshot_export"] = snapshot_and_export(env, data_dir, args.skip_export)
    return 0 if report(args, result) else 1


if __name__ == "__main__":
    sys.exit(main())
