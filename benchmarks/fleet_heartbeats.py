"""Heartbeat load test: a fleet of devices posting heartbeats to a real Sphere server on loopback.

Run from the project root::

    .venv/bin/python benchmarks/fleet_heartbeats.py [--devices 1000] [--period 10] [--duration 60]
                                                    [--workers 2] [--find-max | --no-find-max]

It creates a scratch PostgreSQL database, migrates it, creates the devices and their tokens,
starts uvicorn, drives it with an open-loop load generator, then stops the server and drops the
database. Phase A checks the target (p99 < 100 ms, zero errors at one heartbeat per device per
period); phase B raises the offered rate step by step until a step fails. The last line printed
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
from psycopg import sql

BASE_DIR = Path(__file__).resolve().parent.parent
HEARTBEAT_PATH = "/api/v1/device/heartbeat"
TARGET_P99_MS = 100.0
REQUEST_TIMEOUT_S = 5.0
POOL_SIZE = 200
# A step "sustains" its rate only if the server keeps up with it, not just answers fast.
SUSTAINED_FRACTION = 0.95
# Phase B offers these multiples of the target rate (100 req/s -> 100, 150, 200, 300, ...): fine
# steps at the low end, where a small machine shared with the load generator tops out.
STEP_MULTIPLES = (1, 1.5, 2, 3, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
STEP_PAUSE_S = 3.0

# Runs inside `manage.py shell` so devices and tokens are made by the real service code.
SEED_CODE = """
import json
from devices.models import Device, DeviceGroup
from devices.services import issue_credential
group = DeviceGroup.objects.create(
    name="bench", heartbeat_period_s={period}, grace_s={grace}, config={{"sample_rate": 0.01}}
)
tokens = [issue_credential(Device.objects.create(name=f"bench-{{i:05d}}", group=group)) for i in range({count})]
print("TOKENS " + json.dumps(tokens))
"""


# --- Scratch database, devices and server -------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def scratch_database(admin_url: str):
    """Yield the URL of a new, empty database; drop it afterwards whatever happened."""
    name = f"sphere_bench_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(admin_url, name)
    finally:
        # FORCE: a server that failed to stop cleanly may still hold connections.
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        print(f"dropped scratch database {name}")


def sphere_env(db_url: str, data_dir: str, extra: list[str]) -> dict[str, str]:
    """Environment for every Sphere process: scratch DB and data dir, embedded channel layer."""
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=db_url,
        DATA_DIR=data_dir,
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",  # DEBUG keeps every SQL query in memory and would skew the figures
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="sphere.settings",
    )
    # --env NAME=VALUE, to compare server settings (e.g. DB_CONN_MAX_AGE) without editing files.
    env.update(item.split("=", 1) for item in extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def seed_devices(env: dict[str, str], count: int, period: float) -> list[str]:
    heartbeat_period = max(1, round(period))
    code = SEED_CODE.format(count=count, period=heartbeat_period, grace=3 * heartbeat_period)
    output = manage(env, "shell", "-c", code)
    line = next(line for line in output.splitlines() if line.startswith("TOKENS "))
    return json.loads(line.removeprefix("TOKENS "))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(env: dict[str, str], workers: int, log_path: Path):
    """Start uvicorn on a free loopback port, yield (base URL, pid), stop it afterwards."""
    port = free_port()
    options = f"--host 127.0.0.1 --port {port} --workers {workers} --no-access-log --log-level warning"
    command = [sys.executable, "-m", "uvicorn", "sphere.asgi:application", *options.split()]
    with open(log_path, "wb") as log:
        # Own session, so stopping it also reaches the worker processes uvicorn spawned.
        server = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, server, log_path)
        yield base_url, server.pid
    finally:
        stop(server)


def wait_until_healthy(base_url: str, server: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
    # Workers that outlived their master (e.g. after a kill) belong to the same session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, 9)


def print_server_errors(log_path: Path, limit: int = 5) -> None:
    """Summarise the exceptions in the server log, which goes away with the temp dir."""
    # The last line of a traceback names the exception: "psycopg.OperationalError: ...".
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*:")
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if pattern.match(line)]
    counts = collections.Counter(line[:240] for line in lines)
    if counts:
        print(f"\nserver log: {len(lines)} exceptions, most common:")
        print("\n".join(f"  {n} x {line}" for line, n in counts.most_common(limit)))


def telemetry_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM devices_telemetry").fetchone()[0]


def sessions_opened(conn: psycopg.Connection) -> int:
    """Connections ever made to the scratch database (PostgreSQL 14+); 0 where not counted."""
    row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return row[0] or 0


def server_connections(conn: psycopg.Connection) -> int:
    """Connections to the scratch database other than this one: all of them are the server's."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    return conn.execute(query).fetchone()[0]


async def peak_connections(conn: psycopg.Connection, peak: list[int], every: float = 0.5) -> None:
    """Track the most connections the server holds: a leak shows up long before max_connections."""
    while True:
        peak[0] = max(peak[0], await asyncio.to_thread(server_connections, conn))
        await asyncio.sleep(every)


# --- CPU accounting (Linux /proc; figures are None elsewhere) ----------------------------------


def process_tree_cpu_s(root_pid: int) -> float | None:
    """CPU seconds used so far by root_pid and its live descendants."""
    if not Path(f"/proc/{root_pid}/stat").exists():
        return None
    stats = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # processes come and go while we read
            stats.append(Path(f"/proc/{pid}/stat").read_text())
    children, cpu = {}, {}
    for line in stats:
        # Fields after the command name, which is in parentheses and may contain spaces.
        pid, rest = int(line.split(" ", 1)[0]), line.rsplit(")", 1)[1].split()
        children.setdefault(int(rest[1]), []).append(pid)
        cpu[pid] = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def machine_busy_s() -> float | None:
    """Non-idle CPU seconds of the whole machine (all cores) since boot."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def background_cores(seconds: float = 3.0) -> float | None:
    """Cores kept busy by other processes before the benchmark starts: its figures share them."""
    before = machine_busy_s()
    time.sleep(seconds)
    after = machine_busy_s()
    return None if before is None or after is None else round((after - before) / seconds, 2)


@dataclass
class CpuMeter:
    """Cores used over an interval by the load generator, the server and the whole machine."""

    server_pid: int
    start: dict = field(default_factory=dict)

    def sample(self) -> dict:
        return {
            "wall": time.monotonic(),
            "client": time.process_time(),
            "server": process_tree_cpu_s(self.server_pid),
            "machine": machine_busy_s(),
        }

    def begin(self) -> None:
        self.start = self.sample()

    def end(self) -> dict[str, float | None]:
        """CPU seconds of each party (``<name>_cpu_s``) and cores they kept busy (``<name>_cores``)."""
        now = self.sample()
        wall = now["wall"] - self.start["wall"]
        figures = {}
        for name in ("client", "server", "machine"):
            used = None if now[name] is None else now[name] - self.start[name]
            figures[f"{name}_cpu_s"] = used
            figures[f"{name}_cores"] = None if used is None else round(used / wall, 2)
        return figures


# --- Load generator ------------------------------------------------------------------------------


def heartbeat_body() -> dict:
    """A heartbeat like an edge client sends: a fresh idempotency key and plausible metrics."""
    return {
        "id": str(uuid.uuid4()),
        "sent_at": datetime.now(UTC).isoformat(),
        "cpu_percent": round(random.uniform(5, 90), 1),
        "memory_percent": round(random.uniform(20, 80), 1),
        "memory_used_mb": round(random.uniform(150, 400), 1),
        "temperature_c": round(random.uniform(40, 75), 1),
        "disk_percent": round(random.uniform(5, 60), 1),
        "net_rx_bytes": random.randint(10**4, 10**8),
        "net_tx_bytes": random.randint(10**4, 10**8),
        "latency_p50_ms": round(random.uniform(5, 20), 2),
        "latency_p95_ms": round(random.uniform(20, 60), 2),
        "throughput_ips": round(random.uniform(5, 30), 1),
        "uptime_s": round(random.uniform(600, 30 * 86400), 1),
        "client_version": "0.1.0",
        "model_version": "digits-knn@1",
    }


@dataclass
class RunStats:
    latencies_ms: list[float] = field(default_factory=list)
    service_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    last_done: float = 0.0

    def failed(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


async def send_heartbeat(session, url: str, token: str, scheduled: float, stats: RunStats) -> None:
    started = time.perf_counter()
    body = heartbeat_body()
    try:
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            status = response.status
    except TimeoutError:
        stats.failed("timeout")
        return
    except aiohttp.ClientError as exc:
        stats.failed(type(exc).__name__)
        return
    done = time.perf_counter()
    stats.last_done = max(stats.last_done, done)
    if status != 200:
        stats.failed(f"http_{status}")
        return
    # From the scheduled time, so a server that falls behind cannot hide its queue (coordinated
    # omission); service time from the actual send shows how much of that is queueing.
    stats.latencies_ms.append((done - scheduled) * 1000)
    stats.service_ms.append((done - started) * 1000)


async def offer_load(session, base_url: str, tokens: list[str], rate: float, duration: float) -> tuple[RunStats, float]:
    """Send rate*duration heartbeats on a fixed schedule, whatever the server's answer times.

    Request ``seq`` is due at ``seq / rate`` and comes from device ``seq % N``, so each device
    sends once per N/rate seconds and the devices' phases are spread evenly over that period.
    """
    stats, tasks = RunStats(), set()
    url = base_url + HEARTBEAT_PATH
    start = time.perf_counter() + 0.05
    for seq in range(int(duration * rate)):
        scheduled = start + seq / rate
        # sleep(0) when late still yields, so answers keep being read while sends catch up.
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        task = asyncio.create_task(send_heartbeat(session, url, tokens[seq % len(tokens)], scheduled, stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        stats.sent += 1
    await drain(tasks, stats)
    return stats, start


async def drain(tasks: set, stats: RunStats) -> None:
    """Wait for answers in flight; every request has its own timeout, this is a backstop."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S * 2)
    for task in pending:
        task.cancel()
        stats.failed("unfinished")


# --- Figures -------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def summarise(stats: RunStats, start: float, rate: float, stored: int, cpu: dict) -> dict:
    ok = len(stats.latencies_ms)
    elapsed = max(stats.last_done - start, 1e-9)
    mismatch = stored - ok
    errors = sum(stats.errors.values()) + abs(mismatch)
    figures = {
        "offered_rate": round(rate, 1),
        "sent": stats.sent,
        "ok": ok,
        "achieved_rate": round(ok / elapsed, 1),
        "errors": errors,
        "error_kinds": dict(stats.errors, **({"telemetry_count_mismatch": mismatch} if mismatch else {})),
        "telemetry_rows_stored": stored,
        **{f"p{p}_ms": _ms(percentile(stats.latencies_ms, p)) for p in (50, 95, 99)},
        "max_ms": _ms(max(stats.latencies_ms, default=None)),
        "service_p50_ms": _ms(percentile(stats.service_ms, 50)),
        "service_p99_ms": _ms(percentile(stats.service_ms, 99)),
        # CPU per answer depends far less than latency on whatever else the machine is running.
        "server_cpu_ms_per_request": _ms(cpu["server_cpu_s"] * 1000 / ok) if cpu["server_cpu_s"] and ok else None,
        **{name: value for name, value in cpu.items() if name.endswith("_cores")},
    }
    figures["passed"] = meets_target(figures)
    return figures


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def meets_target(figures: dict) -> bool:
    return (
        figures["errors"] == 0
        and figures["p99_ms"] is not None
        and figures["p99_ms"] < TARGET_P99_MS
        and figures["achieved_rate"] >= SUSTAINED_FRACTION * figures["offered_rate"]
    )


def print_run(title: str, figures: dict) -> None:
    print(
        f"{title}: offered {figures['offered_rate']:.0f} req/s, sent {figures['sent']}, "
        f"ok {figures['ok']}, achieved {figures['achieved_rate']:.1f} req/s, errors {figures['errors']}"
        + (f" {figures['error_kinds']}" if figures["error_kinds"] else "")
    )
    print(
        f"  latency from schedule ms: p50 {figures['p50_ms']}  p95 {figures['p95_ms']}  "
        f"p99 {figures['p99_ms']}  max {figures['max_ms']}   "
        f"(service time p50 {figures['service_p50_ms']}  p99 {figures['service_p99_ms']})"
    )
    print(
        f"  telemetry rows stored {figures['telemetry_rows_stored']} (200 answers {figures['ok']}); "
        f"server held up to {figures['peak_db_connections']} database connections and opened "
        f"{figures['db_connections_opened']} new ones"
    )
    if None not in (figures["server_cores"], figures["client_cores"], figures["machine_cores"]):
        rest = figures["machine_cores"] - figures["server_cores"] - figures["client_cores"]
        print(
            f"  CPU cores busy: server {figures['server_cores']:.2f}, load generator {figures['client_cores']:.2f}, "
            f"rest of machine (PostgreSQL, anything else) {rest:.2f}; total {figures['machine_cores']:.2f} "
            f"of {os.cpu_count()}; server CPU per answer {figures['server_cpu_ms_per_request']} ms"
        )


# --- Phases --------------------------------------------------------------------------------------


@dataclass
class Bench:
    session: aiohttp.ClientSession
    base_url: str
    server_pid: int
    db: psycopg.Connection
    tokens: list[str]

    async def run(self, rate: float, duration: float) -> dict:
        before, sessions, cpu, peak = telemetry_rows(self.db), sessions_opened(self.db), CpuMeter(self.server_pid), [0]
        sampler = asyncio.create_task(peak_connections(self.db, peak))
        cpu.begin()
        try:
            stats, start = await offer_load(self.session, self.base_url, self.tokens, rate, duration)
        finally:
            sampler.cancel()
        usage = cpu.end()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler  # the check connection must be idle again before the row count below
        figures = summarise(stats, start, rate, telemetry_rows(self.db) - before, usage)
        # New connections per answer: about 0 with persistent or pooled connections, 1 if every
        # request connects afresh (a PostgreSQL backend fork each time).
        return figures | {"peak_db_connections": peak[0], "db_connections_opened": sessions_opened(self.db) - sessions}


async def find_max(bench: Bench, target_rate: float, step_duration: float) -> tuple[float | None, list[dict]]:
    """Raise the offered rate until a step fails; return the highest passing rate and all steps."""
    best, steps = None, []
    for multiple in STEP_MULTIPLES:
        rate = target_rate * multiple
        await asyncio.sleep(STEP_PAUSE_S)  # let the previous step's backlog clear
        figures = await bench.run(rate, step_duration)
        steps.append(figures)
        print_run(f"step {rate:.0f} req/s ({len(bench.tokens) / rate:.2f} s period)", figures)
        if not figures["passed"]:
            break
        best = rate
    return best, steps


async def measure(args, base_url: str, server_pid: int, db: psycopg.Connection, tokens: list[str]) -> dict:
    target_rate = args.devices / args.period
    connector = aiohttp.TCPConnector(limit=POOL_SIZE)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        bench = Bench(session, base_url, server_pid, db, tokens)
        result = {"target_rate": round(target_rate, 1)}
        if args.warmup > 0:
            # Every device's first heartbeat moves it from "new" to "online" (extra queries and
            # live events); the warm-up keeps that one-off out of the steady-state figures.
            print_run("warm-up (not scored)", await bench.run(target_rate, args.warmup))
        phase_a = await bench.run(target_rate, args.duration)
        print_run(f"\nPhase A, target: {args.devices} devices every {args.period:g} s", phase_a)
        result["phase_a"] = phase_a
        if args.find_max:
            print("\nPhase B, step-up (the load generator shares the machine's cores with the server):")
            result["max_sustained_rate"], result["steps"] = await find_max(bench, target_rate, args.step_duration)
        return result


# --- Entry point ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between a device's heartbeats")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of phase A")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--find-max", action=argparse.BooleanOptionalAction, default=True, help="run phase B")
    parser.add_argument("--step-duration", type=float, default=15.0, help="seconds per phase B step")
    parser.add_argument("--warmup", type=float, default=None, help="unscored seconds first (default: one period)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the server"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL role allowed to create databases; the scratch database is made beside it",
    )
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.period
    return args


def report(args, result: dict) -> None:
    phase_a = result["phase_a"]
    verdict = "PASS" if phase_a["passed"] else "FAIL"
    print(
        f"\nTarget: p99 < {TARGET_P99_MS:.0f} ms and zero errors at {result['target_rate']:.0f} req/s -> {verdict} "
        f"(p99 {phase_a['p99_ms']} ms, errors {phase_a['errors']}, achieved {phase_a['achieved_rate']} req/s)"
    )
    if args.find_max:
        best = result["max_sustained_rate"]
        print(
            f"Highest sustained rate (p99 < {TARGET_P99_MS:.0f} ms, zero errors, achieved >= "
            f"{SUSTAINED_FRACTION:.0%} of offered): {'none' if best is None else f'{best:.0f} req/s'} "
            f"with {args.workers} worker(s); the load generator ran on the same {os.cpu_count()} cores."
        )
    line = {
        "benchmark": "fleet_heartbeats",
        "devices": args.devices,
        "period_s": args.period,
        "duration_s": args.duration,
        "workers": args.workers,
        "server_env": args.env,
        "cpu_count": os.cpu_count(),
        "background_cores": result["background_cores"],
        "target_rate": result["target_rate"],
        **{key: phase_a[key] for key in ("sent", "ok", "achieved_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms")},
        **{key: phase_a[key] for key in ("service_p50_ms", "service_p99_ms", "errors", "error_kinds")},
        **{key: phase_a[key] for key in ("telemetry_rows_stored", "peak_db_connections", "db_connections_opened")},
        "server_cpu_ms_per_request": phase_a["server_cpu_ms_per_request"],
        "target_met": phase_a["passed"],
        "max_sustained_rate": result.get("max_sustained_rate"),
        "steps": result.get("steps", []),
    }
    print(json.dumps(line))


def prepare_fleet(env: dict[str, str], devices: int, period: float) -> list[str]:
    manage(env, "migrate", "--noinput", "-v", "0")
    started = time.monotonic()
    tokens = seed_devices(env, devices, period)
    print(f"created {len(tokens)} devices with tokens in {time.monotonic() - started:.1f} s")
    return tokens


def run_benchmark(args, env: dict[str, str], db: str, tokens: list[str], log_path: Path) -> dict:
    # Opened before the server starts, so the row count check holds a connection of its own
    # even if the server uses up the database's connection slots.
    with psycopg.connect(db, autocommit=True) as check_conn, running_server(env, args.workers, log_path) as server:
        base_url, pid = server
        print(f"server: uvicorn, {args.workers} worker(s), {base_url}, scratch database {db.rsplit('/', 1)[1]}")
        result = asyncio.run(measure(args, base_url, pid, check_conn, tokens))
    print_server_errors(log_path)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sphere-bench-") as data_dir, scratch_database(args.database_url) as db:
        env = sphere_env(db, data_dir, args.env)
        tokens = prepare_fleet(env, args.devices, args.period)
        background = background_cores()
        print(f"before the server started, other processes kept {background} of {os.cpu_count()} cores busy")
        result = run_benchmark(args, env, db, tokens, Path(data_dir) / "server.log")
    report(args, result | {"background_cores": background})
    return 0 if result["phase_a"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
