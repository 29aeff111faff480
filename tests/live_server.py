"""Run the real Sphere server (`manage.py runsphere`) in a subprocess, for end-to-end tests.

The server gets the embedded topology on a fresh data directory: a new SQLite file, the
filesystem broker and media under ``DATA_DIR``, no DATABASE_URL/REDIS_URL, a random SECRET_KEY.
Management code (users, enrollment tokens) runs against the same directory through
``manage.py shell -c`` with the same environment. Anything that fails inside
``with running_sphere(...)`` carries the tail of the server's log, so a red test shows why.
Migrating takes seconds, so each environment's fresh database is migrated once per test session
and copied into each data directory (``migrated_data_dir``).

Usage::

    with running_sphere(tmp_path / "data", DEVICE_STATUS_SWEEP_S=1) as server:
        token = server.create_enrollment_token()
        device = enroll(server, token)
        heartbeat(server, device["token"])
"""

from __future__ import annotations

import atexit
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import ClientConnection, connect

from conftest import heartbeat_body

BASE_DIR = Path(__file__).resolve().parent.parent
MANAGE = BASE_DIR / "manage.py"

# Variables that would switch the subprocess to the production topology (or another settings
# module); they are dropped, with their NAME_FILE forms, so the server is always embedded.
TOPOLOGY_VARIABLES = frozenset(
    {
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_TASK_ALWAYS_EAGER",
        "S3_BUCKET",
        "MLFLOW_TRACKING_URI",
        "SECRET_KEY",
        "DATA_DIR",
        "DJANGO_SETTINGS_MODULE",
    }
)
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def embedded_env(data_dir: Path, extra: dict[str, object]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in TOPOLOGY_VARIABLES and name.removesuffix("_FILE") not in TOPOLOGY_VARIABLES
    }
    env.update(
        DATA_DIR=str(data_dir),
        SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_SETTINGS_MODULE="sphere.settings",
        PYTHONUNBUFFERED="1",  # log lines reach the file as they happen, not at exit
    )
    env.update({name: str(value) for name, value in extra.items()})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Login:
    username: str
    password: str


@dataclass
class SphereServer:
    data_dir: Path
    env: dict[str, str] = field(repr=False)  # holds the SECRET_KEY and the caller's environment
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    # --- management commands against the same data directory --------------------------------

    def manage(self, *args: str, timeout: float = 60) -> str:
        # cwd is the data directory, so nothing the commands write lands in the source tree.
        result = subprocess.run(
            [sys.executable, str(MANAGE), *args],
            cwd=self.data_dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, (
            f"manage.py {' '.join(args[:1])} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
        )
        return result.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", textwrap.dedent(code))

    def shell_value(self, code: str) -> str:
        """Run ``code``, which must ``print("RESULT=" + value)``; return that value."""
        output = self.shell(code)
        found = re.findall(r"^RESULT=(.*)$", output, re.MULTILINE)
        assert found, f"no RESULT= line in the shell output:\n{output[-2000:]}"
        return found[-1]

    def create_enrollment_token(self, name: str = "e2e", max_uses: int = 10) -> str:
        return self.shell_value(
            f"""
            from datetime import timedelta
            from django.utils import timezone
            from devices.services import create_enrollment_token
            _, plaintext = create_enrollment_token(
                name={name!r}, max_uses={max_uses}, expires_at=timezone.now() + timedelta(hours=1)
            )
            print("RESULT=" + plaintext)
            """
        )

    def create_user(self, username: str, *, staff: bool, apps: tuple[str, ...] = ()) -> Login:
        """A user holding every permission of ``apps`` (``("devices",)``); returns its login."""
        password = f"pw-{username}-{secrets.token_hex(4)}"
        self.shell(
            f"""
            from django.contrib.auth import get_user_model
            from django.contrib.auth.models import Permission
            user = get_user_model().objects.create_user(
                {username!r}, password={password!r}, is_staff={staff!r}
            )
            user.user_permissions.set(Permission.objects.filter(content_type__app_label__in={list(apps)!r}))
            """
        )
        return Login(username, password)

    def create_operator(self, username: str = "olivia") -> Login:
        """The operator persona of conftest.py: staff with every fleet (devices) permission."""
        return self.create_user(username, staff=True, apps=("devices",))

    def session_for(self, username: str) -> str:
        """A session id for ``username`` without the admin login form (which admits staff only)."""
        return self.shell_value(
            f"""
            from django.contrib.auth import get_user_model
            from django.test import Client
            client = Client()
            client.force_login(get_user_model().objects.get(username={username!r}))
            print("RESULT=" + client.cookies["sessionid"].value)
            """
        )

    # --- the server process ------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self.port = free_port(self.host)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, str(MANAGE), "runsphere", "--host", self.host, "--port", str(self.port)],
                    cwd=self.data_dir,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_until_healthy()
                return
            except AssertionError:
                # Another process may have taken the free port between our probe and the bind.
                lost_port = "address already in use" in self.log_tail(5).lower()
                if attempt == attempts or not lost_port:
                    raise

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"runsphere exited with {self.process.returncode} before /healthz answered")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"/healthz did not answer within {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


# Per extra environment, a data directory migrated once in this test session.
_MIGRATED: dict[tuple[tuple[str, str], ...], Path] = {}


def migrated_data_dir(data_dir: Path, extra_env: dict[str, object]) -> SphereServer:
    """A server (not started) on ``data_dir`` holding a freshly migrated database: a copy of one
    migrated in a scratch directory with the same extra environment (the beat schedule installed
    after migrating reads DEVICE_STATUS_SWEEP_S and the like from it)."""
    key = tuple(sorted((name, str(value)) for name, value in extra_env.items()))
    template = _MIGRATED.get(key)
    if template is None:
        template = Path(tempfile.mkdtemp(prefix="sphere-migrated-"))
        atexit.register(shutil.rmtree, template, ignore_errors=True)
        SphereServer(data_dir=template, env=embedded_env(template, extra_env)).manage("migrate", "--noinput")
        _MIGRATED[key] = template
    shutil.copytree(template, data_dir, dirs_exist_ok=True)
    return SphereServer(data_dir=data_dir, env=embedded_env(data_dir, extra_env))


@contextmanager
def running_sphere(data_dir: Path, **extra_env: object) -> Iterator[SphereServer]:
    """Migrate a fresh data directory, serve it with runsphere, always stop the process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = migrated_data_dir(data_dir, extra_env)
    try:
        server.start()
        yield server
    except BaseException as exc:
        exc.add_note(f"--- runsphere log (last lines, {server.log_path}) ---\n{server.log_tail()}")
        raise
    finally:
        server.stop()


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(repr=False)
    text: str = ""

    def json(self):
        return json.loads(self.text)

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.text[:2000]}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # tests look at redirects themselves


class HttpClient:
    """A small cookie-keeping HTTP client (stdlib only) that does not follow redirects."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect)

    def request(self, method: str, path: str, *, json_body=None, form=None, headers=None) -> Response:
        headers = dict(headers or {})
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=10) as answer:
                return Response(answer.status, dict(answer.headers), answer.read().decode())
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx and 5xx answers
            return Response(error.code, dict(error.headers), error.read().decode(errors="replace"))

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Response:
        return self.request("POST", path, **kwargs)

    def cookie(self, name: str) -> str | None:
        return next((cookie.value for cookie in self.cookies if cookie.name == name), None)

    def login(self, login: Login) -> str:
        """Sign in through the admin login form, as a person would; return the session id."""
        page = self.get("/admin/login/")
        assert page.status == 200, page
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf, "no CSRF token in the admin login form"
        answer = self.post(
            "/admin/login/?next=/fleet/",
            form={
                "csrfmiddlewaretoken": csrf.group(1),
                "username": login.username,
                "password": login.password,
                "next": "/fleet/",
            },
        )
        assert answer.status == 302, f"login as {login.username} failed: {answer}"
        session = self.cookie("sessionid")
        assert session, "the login answer set no session cookie"
        return session


# --- Devices ------------------------------------------------------------------------------------


def enroll(server: SphereServer, enrollment_token: str, name: str = "edge-1") -> dict:
    """Enroll a device over the device API; returns the answer (device_id, token, period)."""
    answer = HttpClient(server.url).post(
        "/api/v1/enroll",
        json_body={"enrollment_token": enrollment_token, "request_id": str(uuid.uuid4()), "name": name},
    )
    assert answer.status == 201, answer
    return answer.json()


def heartbeat(server: SphereServer, device_token: str, **overrides) -> Response:
    return HttpClient(server.url).post(
        "/api/v1/device/heartbeat",
        json_body=heartbeat_body(**overrides),
        headers={"Authorization": f"Bearer {device_token}"},
    )


# --- Websockets ---------------------------------------------------------------------------------


def open_live(server: SphereServer, topic: str, *, session_id: str | None = None, origin: str | None = None):
    """Connect to ``/ws/live/<topic>/`` as a browser of ``origin`` (the server itself by default)."""
    headers = {"Cookie": f"sessionid={session_id}"} if session_id else {}
    return connect(
        f"{server.ws_url}/ws/live/{topic}/",
        origin=origin or server.url,
        additional_headers=headers,
        open_timeout=5,
    )


def wait_for_event(live: ClientConnection, event: str, matches: Callable[[dict], bool], timeout: float) -> dict:
    """Read live events until one named ``event`` whose data ``matches``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(live.recv(timeout=left))
        except TimeoutError:
            break
        seen.append(message)
        if message["event"] == event and matches(message["data"]):
            return message["data"]
    raise AssertionError(f"no matching {event!r} event within {timeout} s; received: {seen}")
