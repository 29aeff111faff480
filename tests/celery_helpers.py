"""Real Celery processes for tests: workers and beat started against the test database and Redis.

A test module imports the fixture functions (``*_fixture``) to get the fixtures ``celery_process``
and ``no_eager`` and the autouse ``_empty_queues``: only the modules that do flush Redis. (The
functions have other names than their fixtures so that test arguments shadow no import.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def database_url_of_the_test_database() -> str:
    db = connection.settings_dict
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class CeleryProcess:
    """A `celery` command in its own process group (a prefork worker is a parent and its
    children), writing its output to ``log``."""

    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: " ready." in self.output(), timeout, logs=[self.log])

    def kill(self) -> None:
        """SIGKILL the whole group at once, as the OOM killer or a lost node would: no warm
        shutdown, no ack, no rollback sent to the database."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)


@pytest.fixture(name="celery_process")
def celery_process_fixture(tmp_path):
    """``start(*celery_args, **env)``: run ``celery -A sphere <args>`` with the test's database,
    Redis and data directory (so ``DATA_DIR/media`` is the test's storage) plus ``env``."""
    started: list[tuple[CeleryProcess, object]] = []

    def start(*args, **env) -> CeleryProcess:
        env = {
            **os.environ,
            "DATABASE_URL": database_url_of_the_test_database(),
            "REDIS_URL": settings.REDIS_URL,
            "DATA_DIR": str(tmp_path),
            **env,
        }
        path = tmp_path / f"celery-{len(started)}.log"
        log = open(path, "w+")  # noqa: SIM115 - closed below
        popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "sphere", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        started.append((CeleryProcess(popen, path), log))
        return started[-1][0]

    yield start
    for process, log in started:
        # Killed rather than shut down warmly (seconds each): the next test empties the queues.
        process.kill()
        log.close()


@pytest.fixture(name="no_eager")
def no_eager_fixture():
    from sphere.celery import app

    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = True


@pytest.fixture(name="_empty_queues", autouse=True)
def empty_queues_fixture():
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def wait_for(predicate, timeout=30.0, logs=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = "".join(log.read_text()[-3000:] for log in logs or [])
    pytest.fail(f"condition not met within {timeout}s\n{tail}")
