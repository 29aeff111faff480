"""A real HTTP server on 127.0.0.1 that speaks the device protocol and misbehaves on demand.

It implements the endpoints of docs/device-protocol.md the way the Sphere server must: bearer
token check, deduplication by record UUID (a replay changes nothing and is answered like the
first time), per-record results for prediction batches, and package checks (headers, archive
sha256, manifest, per-file sha256, paths). It counts every receipt, so a test can tell "stored
once" (``records``) from "received several times" (``receipts``).

Faults are drawn per request from a seeded generator, as shares of requests:

- ``error``: answer 500 without doing anything;
- ``drop``: close the connection without an answer, before doing anything;
- ``drop_after``: do the work, then close without an answer (the client must resend and the
  server must deduplicate);
- ``stall``: do the work, then answer only after ``stall_s`` (past the client's timeout).

Usage::

    with FlakyServer() as server:
        server.set_faults(error=0.2, drop_after=0.2, seed=1)
        ... SyncClient(server.url, token_file_with(server.token), store) ...
        assert set(server.records["prediction"]) == acknowledged_ids
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath

TOKEN = "sphd_flaky_0123456789abcdef"
ENROLLMENT_TOKEN = "sphe_flaky_enroll"
HEARTBEAT_FIELDS = {
    *("id", "sent_at", "client_version", "model_version", "shutting_down"),
    *("cpu_percent", "memory_percent", "memory_used_mb", "temperature_c", "disk_percent"),
    *("net_rx_bytes", "net_tx_bytes", "latency_p50_ms", "latency_p95_ms", "throughput_ips", "error_rate", "uptime_s"),
    *("runtime", "bundle"),  # HeartbeatSerializer's nested objects
}
DEVICE_PATHS = ("/api/v1/device/", "/api/v1/enroll", "/files/")


class Faults:
    def __init__(self, *, error=0.0, drop=0.0, drop_after=0.0, stall=0.0, seed=0, paths=DEVICE_PATHS):
        self.shares = {"error": error, "drop": drop, "drop_after": drop_after, "stall": stall}
        self.paths, self.rng = paths, random.Random(seed)

    def draw(self, path: str) -> str | None:
        if not path.startswith(self.paths):
            return None
        roll = self.rng.random()
        for fault, share in self.shares.items():
            if roll < share:
                return fault
            roll -= share
        return None


class FlakyServer:
    def __init__(self, *, token: str = TOKEN, stall_s: float = 0.5, max_package_bytes: int = 16 * 1024 * 1024):
        self.token, self.stall_s, self.max_package_bytes = token, stall_s, max_package_bytes
        self.lock = threading.Lock()
        self.faults = Faults()
        self.device_id = str(uuid.uuid4())
        self.desired = {"model": None, "verdicts": [], "config": {}, "heartbeat_period_s": 60}
        self.files: dict[str, bytes] = {}
        self.strict_batches = False  # True: one bad prediction refuses the whole batch with 400
        self.disabled_paths: set[str] = set()  # answered 404, like a server without the endpoint
        self.records: dict[str, dict[str, dict]] = defaultdict(dict)  # kind -> id -> record
        self.receipts: Counter = Counter()  # record id -> times received
        self.packages: dict[str, dict] = {}  # package id -> manifest
        self.attachments: dict[str, bytes] = {}  # "<record id>/<name>" -> data
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.acks: list[dict] = []
        self.faults_drawn: dict[str, Counter] = defaultdict(Counter)  # path -> fault (None: none) -> n
        self.enrollments: dict[str, dict] = {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def set_faults(self, **shares) -> None:
        with self.lock:
            self.faults = Faults(**shares)

    def count(self, method: str, path: str) -> int:
        return sum(1 for seen_method, seen_path, _ in self.requests if (seen_method, seen_path) == (method, path))

    # --- endpoint logic (called with the lock held) ---------------------------------------------

    def enroll(self, body: dict) -> tuple[int, dict]:
        if body.get("enrollment_token") != ENROLLMENT_TOKEN:
            return 401, {"detail": "Unknown enrollment token."}
        self.enrollments.setdefault(body["request_id"], body)
        return 201, {"device_id": self.device_id, "token": self.token, "heartbeat_period_s": 60}

    def heartbeat(self, body: dict) -> tuple[int, dict]:
        unknown = sorted(set(body) - HEARTBEAT_FIELDS)
        if unknown or not _is_uuid(body.get("id")):
            return 400, {name: ["Unknown field."] for name in unknown} or {"id": ["Must be a valid UUID."]}
        self._keep("heartbeat", body["id"], body)
        return 200, self.desired_state()

    def desired_state(self) -> dict:
        return {"device_id": self.device_id, "status": "online", **json.loads(json.dumps(self.desired))}

    def predictions(self, body: dict) -> tuple[int, dict]:
        batch = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(batch, list) or not 1 <= len(batch) <= 1000:
            return 400, {"predictions": ["Expected a list of 1 to 1000 predictions."]}
        errors = [_prediction_errors(item) for item in batch]
        if self.strict_batches and any(errors):
            return 400, {"predictions": [error or {} for error in errors]}
        return 200, {"results": [self._prediction(item, error) for item, error in zip(batch, errors, strict=True)]}

    def _prediction(self, item, errors: dict) -> dict:
        if errors:
            return {"id": item.get("id") if isinstance(item, dict) else None, "status": "rejected", "errors": errors}
        status = "duplicate" if item["id"] in self.records["prediction"] else "created"
        self._keep("prediction", item["id"], item)
        return {"id": item["id"], "status": status}

    def verdict_acks(self, body: dict) -> tuple[int, dict]:
        acks = body.get("acks") if isinstance(body, dict) else None
        if not isinstance(acks, list):
            return 400, {"acks": ["Expected a list."]}
        self.acks.extend(acks)
        acked = {(ack.get("event_id"), ack.get("status")) for ack in acks}
        self.desired["verdicts"] = [
            verdict
            for verdict in self.desired["verdicts"]
            if (verdict.get("event_id"), verdict.get("status")) not in acked
        ]
        return 200, {"acknowledged": len(acks)}

    def package(self, headers, data: bytes) -> tuple[int, dict]:
        package_id, sha256 = headers.get("X-Package-Id"), headers.get("X-Package-Sha256")
        if not _is_uuid(package_id) or hashlib.sha256(data).hexdigest() != sha256:
            return 400, {"detail": "X-Package-Id must be a UUID and X-Package-Sha256 the body's sha256."}
        if package_id in self.packages:
            same = self.packages[package_id]["sha256"] == sha256
            return (200, {"id": package_id, "status": "duplicate"}) if same else (409, {"detail": "Id reused."})
        try:
            manifest, files = _open_package(data, headers.get("X-Package-Kind"), package_id)
        except ValueError as exc:
            return 400, {"detail": str(exc)}
        self._file_package(manifest, files)
        self.packages[package_id] = {**manifest, "sha256": sha256}
        return 201, {"id": package_id, "status": "received"}

    def _file_package(self, manifest: dict, files: dict[str, bytes]) -> None:
        if manifest["kind"] == "metrics":
            for line in files["metrics.jsonl"].splitlines():
                record = json.loads(line)
                self._keep("heartbeat", record["id"], record)
            return
        for name, data in files.items():
            parts = PurePosixPath(name).parts
            if name == "event.json":
                record = json.loads(data)
                self._keep("drift_event", record["id"], record)
            elif parts[0] == "samples" and len(parts) == 2:
                record = json.loads(data)
                self._keep("quarantine_sample", record["id"], record)
            elif parts[0] in ("samples", "event"):
                owner = parts[1] if parts[0] == "samples" else json.loads(files["event.json"])["id"]
                self.attachments[f"{owner}/{parts[-1]}"] = data

    def _keep(self, kind: str, record_id: str, record: dict) -> None:
        self.receipts[record_id] += 1
        self.records[kind].setdefault(record_id, record)  # a replay changes nothing


def _prediction_errors(item) -> dict:
    if not isinstance(item, dict):
        return {"non_field_errors": ["Expected an object."]}
    errors = {}
    if not _is_uuid(item.get("id")):
        errors["id"] = ["Must be a valid UUID."]
    confidence = item.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        errors["confidence"] = ["Must be a number between 0 and 1."]
    return errors


def _open_package(data: bytes, kind: str | None, package_id: str) -> tuple[dict, dict[str, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            files = {_safe_name(member): tar.extractfile(member).read() for member in tar}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"unreadable archive: {exc}") from None
    manifest = json.loads(files.pop("manifest.json", b"null"))
    if not isinstance(manifest, dict) or manifest.get("kind") != kind or manifest.get("id") != package_id:
        raise ValueError("manifest.json is missing or disagrees with the headers")
    listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    if set(listed) != set(files):
        raise ValueError("manifest.json does not list exactly the archive's files")
    for name, content in files.items():
        if hashlib.sha256(content).hexdigest() != listed[name]:
            raise ValueError(f"{name}: sha256 does not match the manifest")
    return manifest, files


def _safe_name(member: tarfile.TarInfo) -> str:
    path = PurePosixPath(member.name)
    if not member.isfile() or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{member.name}: not a plain relative file")
    return member.name


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
        return isinstance(value, str)
    except ValueError:
        return False


# --- HTTP plumbing ------------------------------------------------------------------------------


def _handler_for(server: FlakyServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def _serve(self, method: str):
            body = self._read_body()
            with server.lock:
                server.requests.append((method, self.path, self.headers.get("Authorization")))
                fault = server.faults.draw(self.path)
                server.faults_drawn[self.path][fault] += 1
            if fault in ("error", "drop"):
                return self._fail(fault)
            with server.lock:
                try:
                    status, answer = self._route(method, body)
                except Exception as exc:  # a bug here must show as a 500, not as a dropped connection
                    status, answer = 500, {"detail": f"flaky server bug: {exc!r}"}
            if fault == "drop_after":
                return self._fail("drop")
            if fault == "stall":
                time.sleep(server.stall_s)
            self._answer(status, answer)

        def _route(self, method: str, body: bytes) -> tuple[int, dict | bytes]:
            path = self.path
            if path in server.disabled_paths:
                return 404, {"detail": "Not found."}
            if body is None:
                return 413, {"detail": "Request body too large."}
            if method == "POST" and path == "/api/v1/enroll":
                return server.enroll(json.loads(body))
            if path.startswith("/files/"):
                data = server.files.get(path.removeprefix("/files/"))
                return (200, data) if data is not None else (404, {"detail": "Not found."})
            if self.headers.get("Authorization") != f"Bearer {server.token}":
                return 401, {"detail": "Unknown device token."}
            return self._device(method, path, body)

        def _device(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
            if method == "GET" and path == "/api/v1/device/desired-state":
                return 200, server.desired_state()
            if method == "POST" and path == "/api/v1/device/packages":
                return server.package(self.headers, body)
            routes = {
                "/api/v1/device/heartbeat": server.heartbeat,
                "/api/v1/device/predictions": server.predictions,
                "/api/v1/device/verdict-acks": server.verdict_acks,
            }
            if method != "POST" or path not in routes:
                return 404, {"detail": "Not found."}
            try:
                return routes[path](json.loads(body))
            except ValueError:
                return 400, {"detail": "Malformed JSON."}

        def _read_body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            return None if length > server.max_package_bytes else data  # None: too large

        def _fail(self, fault: str):
            if fault == "error":
                return self._answer(500, {"detail": "Injected failure."})
            self.close_connection = True  # no status line at all: the client sees a dropped connection

        def _answer(self, status: int, answer: dict | bytes):
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/octet-stream" if isinstance(answer, bytes) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a stall): exactly the case under test

    return Handler
