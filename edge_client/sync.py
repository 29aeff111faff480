"""Sync client: enrollment, heartbeats, the desired state, and shipping the outbox.

The wire contract is docs/device-protocol.md. In short, one cycle (``SyncClient.sync_once``):

1. **Heartbeat.** Sample telemetry, append it to the store as a ``metric`` record (its UUID is
   the heartbeat ``id``), POST it with the device's ``runtime`` (``telemetry.runtime_info``) and
   the outcome of the last bundle applied (``bundle``, when there is one); the answer is the
   desired state. A refused heartbeat (4xx)
   falls back to GET desired-state, so a bad metric never cuts the device off its orders.
2. **Desired state.** Verdicts on drift events go to ``on_verdict(event_id, status)`` (called
   again only when a verdict's status changes, so it must tolerate a repeat after a crash) and
   are acknowledged with POST /api/v1/device/verdict-acks; the ``model`` goes to
   ``bundles.apply``; the whole state to ``on_desired_state``.
3. **Backlog.** Prediction logs in batches; drift events with their quarantine samples, leftover
   quarantine samples and missed heartbeats' metrics as tar.gz packages.

Delivery is at-least-once from the device and exactly-once on the server, which deduplicates on
the records' UUIDs: a record is marked sent only after a 2xx that covers it, so an answer lost
on the way back means a resend, never a loss. Errors are sorted as follows:

- 401: the token is unknown or revoked. ``CredentialError`` ends the cycle and ``run`` stops:
  retrying cannot help until someone re-enrolls or rotates the token.
- 400, 409, 413, 415, 422 on a record: the record itself is refused (a poison message). A batch
  is split in halves until the bad record is alone; then it is marked ``failed`` with the
  server's message and never retried.
- anything else (5xx, 404 from a server without the endpoint yet, 429, timeouts, refused or
  dropped connections): retried later, with exponential backoff and full jitter, bounded by
  ``backoff_max_s``. Retry times and counts live in the store, so a restart resumes them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import platform
import random
import tarfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edge_client import __version__
from edge_client import http as default_http
from edge_client.config import SyncSection
from edge_client.files import atomic_write
from edge_client.store import DRIFT_EVENT, METRIC, PREDICTION, QUARANTINE_SAMPLE, Item, Store
from edge_client.telemetry import runtime_info

log = logging.getLogger(__name__)

ENROLL = "/api/v1/enroll"
HEARTBEAT = "/api/v1/device/heartbeat"
DESIRED_STATE = "/api/v1/device/desired-state"
PREDICTIONS = "/api/v1/device/predictions"
PACKAGES = "/api/v1/device/packages"
VERDICT_ACKS = "/api/v1/device/verdict-acks"
# Statuses that mean "this record is wrong", not "try again later".
POISON = frozenset({400, 409, 413, 415, 422})
# Package ids are derived from their contents, so rebuilding the same package gives the same id.
PACKAGE_NAMESPACE = uuid.UUID("5f0c8f44-4c44-4d41-9a65-7370686572ae")
PACKAGE_FORMAT = 1
VERDICTS = frozenset({"confirmed", "rejected"})


class CredentialError(Exception):
    """The server refused the device token (401), or the device has none."""


class EnrollmentError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --- enrollment ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    token: str
    heartbeat_period_s: int


def enroll(
    server_url: str,
    enrollment_token: str,
    name: str,
    *,
    token_file: str | Path,
    http=default_http,
    timeout_s: float = 10.0,
    **profile,
) -> Enrollment:
    """Register this device; store its token in ``token_file`` (mode 600) and return it.

    The request id is written next to the token file before the first attempt and reused by
    retries, so a retry after a lost answer gets the same device back instead of a second one.
    ``profile`` may set hardware, platform, location, tags and attributes.
    """
    token_file = Path(token_file)
    if token_file.exists():
        raise EnrollmentError(f"{token_file} exists: this device is enrolled already (delete it to enroll again)")
    request_file = token_file.with_name(token_file.name + ".request-id")
    body = {
        "enrollment_token": enrollment_token,
        "request_id": _request_id(request_file),
        "name": name,
        "client_version": __version__,
        "hardware": _hardware(),
        "platform": platform.platform()[:100],
        **profile,
    }
    answer = http.request("POST", _url(server_url, ENROLL), json=body, timeout=timeout_s)
    data = answer.json() if answer.status == 201 else None
    if not isinstance(data, dict) or "token" not in data:
        raise EnrollmentError(f"enrollment refused: HTTP {answer.status}: {answer.text()}", answer.status)
    _write_secret(token_file, data["token"])
    request_file.unlink(missing_ok=True)
    return Enrollment(str(data["device_id"]), data["token"], int(data["heartbeat_period_s"]))


def _request_id(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    request_id = str(uuid.uuid4())
    _write_secret(path, request_id)
    return request_id


def _write_secret(path: Path, text: str) -> None:
    """Write atomically with mode 600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (text + "\n").encode("ascii"), mode=0o600)


def _hardware() -> str:
    try:  # Raspberry Pi boards name themselves here ("Raspberry Pi Zero 2 W Rev 1.0")
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")[:100]
    except OSError:
        return platform.machine()[:100]


# --- the sync client ----------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one cycle did. ``error`` says the server could not be reached (no heartbeat, no
    desired state); ``problems`` lists records put back for a retry; ``backlog`` says records
    were left for the next cycle (budget spent, or a send failed)."""

    heartbeat: bool = False
    desired_state: dict | None = None
    sent: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    retried: Counter = field(default_factory=Counter)
    bundle: object | None = None
    backlog: bool = False
    error: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


class SyncClient:
    def __init__(
        self,
        server_url: str,
        token_file: str | Path,
        store: Store,
        *,
        settings: SyncSection | None = None,
        telemetry=None,
        bundles=None,
        on_verdict: Callable[[str, str], None] | None = None,
        on_desired_state: Callable[[dict], None] | None = None,
        http=default_http,
        work_dir: str | Path | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.server_url, self.token_file, self.store = server_url, Path(token_file), store
        self.settings = settings or SyncSection()
        self.telemetry, self.bundles, self.http = telemetry, bundles, http
        self.on_verdict, self.on_desired_state = on_verdict, on_desired_state
        self.work_dir = Path(work_dir) if work_dir else store.path.parent / "outgoing"
        self.rng, self.clock = rng or random.Random(), clock
        self.heartbeat_period_s = self.settings.heartbeat_period_s
        self.problem = ""  # set when the client stopped for a reason a person must fix

    @classmethod
    def from_config(cls, config, store: Store, **kwargs) -> SyncClient:
        return cls(config.server_url, config.path(config.token_file), store, settings=config.sync, **kwargs)

    # --- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> str:
        """Sync until ``stop`` is set ("stopped") or the token is refused ("credentials")."""
        next_heartbeat, failures = 0.0, 0
        while not stop.is_set():
            due = self.clock() >= next_heartbeat
            try:
                report = self.sync_once(heartbeat=due)
            except CredentialError as exc:
                self.problem = str(exc)
                log.error("sync stopped: %s", exc)
                return "credentials"
            except Exception as exc:  # a full disk, say: the device must keep trying, not lose its sync thread
                log.exception("sync cycle failed")
                report = SyncReport(error=f"{type(exc).__name__}: {exc}")
            if due:
                # Only an unreachable server slows heartbeats; a record's retry does not.
                failures = 0 if report.ok else failures + 1
                next_heartbeat = self.clock() + self._heartbeat_delay(failures)
            stop.wait(self._idle_delay(report, next_heartbeat))
        return "stopped"

    def _heartbeat_delay(self, failures: int) -> float:
        if not failures:
            return self.heartbeat_period_s
        settings = self.settings
        backoff = default_http.backoff_delay(failures, settings.backoff_base_s, settings.backoff_max_s, self.rng)
        return min(self.heartbeat_period_s, backoff)

    def _idle_delay(self, report: SyncReport, next_heartbeat: float) -> float:
        until_heartbeat = max(0.0, next_heartbeat - self.clock())
        if report.backlog and report.ok:
            return min(1.0, until_heartbeat)  # keep draining the backlog between heartbeats
        return until_heartbeat

    def sync_once(self, *, heartbeat: bool = True) -> SyncReport:
        report = SyncReport()
        if not self.server_url:
            report.error = "no server_url configured: running offline, the outbox keeps everything"
            return report
        deadline = self.clock() + self.settings.cycle_budget_s
        if heartbeat:
            state = self._heartbeat(report)
            if state is None:
                return report
            self._apply(state, report)
        done = self._ship_predictions(report, deadline) and self._ship_packages(report, deadline)
        report.backlog = report.backlog or not done
        return report

    # --- heartbeat and desired state ------------------------------------------------------------

    def _heartbeat(self, report: SyncReport) -> dict | None:
        body = self._heartbeat_body()
        # Stored before the first attempt: a heartbeat that never gets through ships later.
        item_id = self.store.append(METRIC, body)
        try:
            answer = self._send("POST", HEARTBEAT, json={"id": item_id, **body})
        except default_http.TransportError as exc:
            report.error = f"heartbeat: {exc}"
            return None
        if answer.ok and isinstance(answer.json(), dict):
            self.store.mark_sent([item_id])
            report.heartbeat = True
            return answer.json()
        if answer.status in POISON:
            self.store.mark_failed(item_id, f"HTTP {answer.status}: {answer.text()}")
            report.failed[METRIC] += 1
            return self._desired_state(report)
        report.error = f"heartbeat: HTTP {answer.status}: {answer.text(200)}"
        return None

    def _heartbeat_body(self) -> dict:
        metrics = self.telemetry.sample() if self.telemetry else {}
        current = self.bundles.current() if self.bundles else None
        outcome = self.bundles.last_outcome() if self.bundles else None
        body = {
            "sent_at": _iso(time.time()),
            **metrics,
            "client_version": __version__,
            "model_version": current.version[:80] if current else "",
            "runtime": runtime_info(),
        }
        return {**body, "bundle": outcome} if outcome else body

    def _desired_state(self, report: SyncReport) -> dict | None:
        try:
            answer = self._send("GET", DESIRED_STATE)
        except default_http.TransportError as exc:
            report.error = f"desired state: {exc}"
            return None
        if answer.ok and isinstance(answer.json(), dict):
            return answer.json()
        report.error = f"desired state: HTTP {answer.status}: {answer.text(200)}"
        return None

    def _apply(self, state: dict, report: SyncReport) -> None:
        report.desired_state = state
        if state.get("device_id"):
            self.store.set_meta("device_id", state["device_id"])
        period = state.get("heartbeat_period_s")
        if isinstance(period, int | float) and not isinstance(period, bool) and period > 0:
            self.heartbeat_period_s = float(period)
        self._apply_verdicts(state.get("verdicts") or [])
        if self.bundles is not None:
            report.bundle = self._apply_model(state.get("model"))
        if self.on_desired_state is not None:
            _guarded(self.on_desired_state, state)

    def _apply_model(self, model):
        try:
            return self.bundles.apply(model)
        except Exception:  # the outbox must keep draining whatever the bundle code hit
            log.exception("applying the assigned model failed")
            return None

    def _apply_verdicts(self, verdicts: list) -> None:
        for verdict in verdicts:
            event_id, status = _verdict(verdict)
            if event_id is None:
                log.warning("ignoring a malformed verdict: %r", verdict)
                continue
            changed = self.store.verdict_status(event_id) != status
            if changed and self.on_verdict is not None and not _guarded(self.on_verdict, event_id, status):
                continue  # not applied: not acknowledged, so the server sends it again
            # Recorded (again) as unacknowledged: a verdict the server still sends lost its ack.
            self.store.record_verdict(event_id, status)
        self._ack_verdicts()

    def _ack_verdicts(self) -> None:
        acks = self.store.unacked_verdicts()
        if not acks:
            return
        try:
            answer = self._send("POST", VERDICT_ACKS, json={"acks": acks})
        except default_http.TransportError as exc:
            log.info("verdict acks wait for the next cycle: %s", exc)
            return
        if answer.ok:
            self.store.ack_verdicts(acks)
        else:
            log.info("verdict acks answered HTTP %s; kept for the next cycle", answer.status)

    # --- prediction logs ------------------------------------------------------------------------

    def _ship_predictions(self, report: SyncReport, deadline: float) -> bool:
        after = 0
        while batch := self.store.pending(PREDICTION, limit=self.settings.prediction_batch_size, after_seq=after):
            if self.clock() > deadline:
                return False
            batch = _fit(batch, self.settings.max_batch_bytes)
            after = batch[-1].seq
            if not self._send_predictions(batch, report):
                return False
        return True

    def _send_predictions(self, batch: list[Item], report: SyncReport) -> bool:
        body = {"predictions": [{"created": _iso(item.created_at), **item.payload, "id": item.id} for item in batch]}
        try:
            answer = self._send("POST", PREDICTIONS, json=body)
        except default_http.TransportError as exc:
            return self._retry(batch, str(exc), report)
        if answer.ok:
            return self._record_results(batch, answer, report)
        if answer.status in POISON:
            return self._bisect(batch, answer, report, self._send_predictions)
        return self._retry(batch, f"HTTP {answer.status}: {answer.text(200)}", report)

    def _record_results(self, batch: list[Item], answer, report: SyncReport) -> bool:
        data = answer.json()
        results = data.get("results") if isinstance(data, dict) else None
        by_id = {result.get("id"): result for result in results or [] if isinstance(result, dict)}
        sent, unanswered = [], []
        for item in batch:
            result = by_id.get(item.id) or {}
            if result.get("status") in ("created", "duplicate"):
                sent.append(item.id)
            elif result.get("status") == "rejected":
                self._poison(item, json.dumps(result.get("errors"))[:2000], report)
            else:
                unanswered.append(item)
        self.store.mark_sent(sent)
        report.sent[PREDICTION] += len(sent)
        return self._retry(unanswered, "no result for this record in the answer", report) if unanswered else True

    def _bisect(self, batch: list[Item], answer, report: SyncReport, send) -> bool:
        """A refused batch: halve it until the refused record is alone, then mark it failed."""
        if len(batch) == 1:
            self._poison(batch[0], f"HTTP {answer.status}: {answer.text()}", report)
            return True
        middle = len(batch) // 2
        return send(batch[:middle], report) and send(batch[middle:], report)

    def _poison(self, item: Item, error: str, report: SyncReport) -> None:
        log.warning("server refused %s %s: %s", item.kind, item.id, error)
        self.store.mark_failed(item.id, error)
        report.failed[item.kind] += 1

    def _retry(self, items: list[Item], error: str, report: SyncReport) -> bool:
        attempt = max(item.attempts for item in items) + 1
        delay = default_http.backoff_delay(attempt, self.settings.backoff_base_s, self.settings.backoff_max_s, self.rng)
        self.store.mark_retry([item.id for item in items], error, delay)
        for item in items:
            report.retried[item.kind] += 1
        report.problems.append(f"{items[0].kind} x{len(items)}: {error}")
        return False

    # --- packages -------------------------------------------------------------------------------

    def _ship_packages(self, report: SyncReport, deadline: float) -> bool:
        return (
            self._ship_drift_events(report, deadline)
            and self._ship_batches("quarantine", QUARANTINE_SAMPLE, report, deadline)
            and self._ship_batches("metrics", METRIC, report, deadline)
        )

    def _ship_drift_events(self, report: SyncReport, deadline: float) -> bool:
        after = 0
        while events := self.store.pending(DRIFT_EVENT, limit=1, after_seq=after):
            if self.clock() > deadline:
                return False
            after = events[0].seq
            samples = self.store.children(events[0].id)
            if not self._send_package("drift_event", _fit_package(events + samples, self.settings), report):
                return False
        return True

    def _ship_batches(self, kind: str, record_kind: str, report: SyncReport, deadline: float) -> bool:
        after, limit = 0, self.settings.package_batch_size
        while batch := self.store.pending(record_kind, limit=limit, after_seq=after, unparented=True):
            if self.clock() > deadline:
                return False
            batch = _fit_package(batch, self.settings)
            after = batch[-1].seq
            if not self._send_package(kind, batch, report):
                return False
        return True

    def _send_package(self, kind: str, items: list[Item], report: SyncReport) -> bool:
        archive = self._build_package(kind, items)
        try:
            answer = self._upload(archive)
        except default_http.TransportError as exc:
            return self._retry(items, str(exc), report)
        finally:
            archive.path.unlink(missing_ok=True)
        if answer.ok:
            self.store.mark_sent([item.id for item in items])
            for item in items:
                report.sent[item.kind] += 1
            return True
        if answer.status == 413 and len(items) > 1:
            # Too big for the server: send the first half now; the rest stay pending.
            return self._send_package(kind, items[: len(items) // 2], report)
        if answer.status in POISON:
            for item in items:
                self._poison(item, f"package refused: HTTP {answer.status}: {answer.text()}", report)
            return True
        return self._retry(items, f"HTTP {answer.status}: {answer.text(200)}", report)

    def _build_package(self, kind: str, items: list[Item]) -> PackageArchive:
        files = _package_files(kind, items, self.store)
        package_id = str(uuid.uuid5(PACKAGE_NAMESPACE, f"{kind}:" + ",".join(sorted(item.id for item in items))))
        created = max(item.created_at for item in items)
        manifest = {
            "format": PACKAGE_FORMAT,
            "id": package_id,
            "kind": kind,
            "device": self.store.get_meta("device_id", ""),
            "created": _iso(created),
            "client_version": __version__,
            "records": [item.id for item in items],
            "files": [
                {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files
            ],
        }
        files.insert(0, ("manifest.json", _json_bytes(manifest)))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return write_package(self.work_dir / f"{package_id}.tar.gz", package_id, kind, files, created)

    def _upload(self, archive: PackageArchive):
        headers = {
            "Content-Type": "application/gzip",
            "Content-Length": str(archive.size),
            "X-Package-Id": archive.id,
            "X-Package-Kind": archive.kind,
            "X-Package-Sha256": archive.sha256,
        }
        with open(archive.path, "rb") as body:  # streamed from disk, not read into memory
            return self._send("POST", PACKAGES, body=body, headers=headers, timeout_factor=3)

    # --- HTTP -----------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, timeout_factor: float = 1, **kwargs):
        answer = self.http.request(
            method,
            _url(self.server_url, path),
            token=self._token(),
            timeout=self.settings.request_timeout_s * timeout_factor,
            **kwargs,
        )
        if answer.status == 401:
            raise CredentialError(f"the server refused the device token ({answer.text(200)}); re-enroll or rotate it")
        return answer

    def _token(self) -> str:
        try:
            token = self.token_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise CredentialError(f"no device token at {self.token_file}: enroll this device first") from None
        if not token:
            raise CredentialError(f"{self.token_file} is empty: enroll this device again")
        return token


# --- packages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageArchive:
    id: str
    kind: str
    path: Path
    sha256: str
    size: int


def _package_files(kind: str, items: list[Item], store: Store) -> list[tuple[str, bytes]]:
    if kind == "metrics":
        lines = (_json_bytes({**item.payload, "id": item.id}) + b"\n" for item in items)
        return [("metrics.jsonl", b"".join(lines))]
    files = []
    for item in items:
        record = {"created": _iso(item.created_at), **item.payload, "id": item.id}
        if item.kind == DRIFT_EVENT:
            folder, name = "event", "event.json"
        else:
            folder, name = f"samples/{item.id}", f"samples/{item.id}.json"
            record["event_id"] = item.parent
        files.append((name, _json_bytes(record)))
        files.extend((f"{folder}/{attachment}", data) for attachment, data in store.attachments(item.id).items())
    return files


def write_package(path: Path, package_id: str, kind: str, files: list[tuple[str, bytes]], created: float):
    """A tar.gz whose bytes depend only on its contents (fixed mtimes, owners and modes, gzip
    header time 0), so a rebuilt package is byte-identical to the first one."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in files:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), int(created), 0o644
                    tar.addfile(info, io.BytesIO(data))
        raw.flush()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PackageArchive(package_id, kind, path, digest, path.stat().st_size)


def _fit(batch: list[Item], max_bytes: int) -> list[Item]:
    """The longest prefix of ``batch`` within ``max_bytes`` (always at least one record)."""
    total, kept = 0, []
    for item in batch:
        total += item.size + 100  # + id, created and JSON punctuation
        if kept and total > max_bytes:
            break
        kept.append(item)
    return kept


def _fit_package(items: list[Item], settings: SyncSection) -> list[Item]:
    return _fit(items[: settings.package_batch_size + 1], settings.max_package_bytes)


def _json_bytes(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _url(server_url: str, path: str) -> str:
    return server_url.rstrip("/") + path


def _verdict(verdict) -> tuple[str | None, str | None]:
    if not isinstance(verdict, dict):
        return None, None
    event_id, status = verdict.get("event_id"), verdict.get("status")
    return (event_id, status) if isinstance(event_id, str) and status in VERDICTS else (None, None)


def _guarded(callback, *args) -> bool:
    # A callback's bug must not stop the outbox from draining; it is logged and retried.
    try:
        callback(*args)
        return True
    except Exception:
        log.exception("sync callback %s failed", getattr(callback, "__name__", callback))
        return False
