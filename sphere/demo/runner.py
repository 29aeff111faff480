"""``manage.py demo``: serve Sphere, seed the story, play it on a simulated fleet, measure it.

One process holds the web server (uvicorn, HTTP and websockets), on the embedded topology the
Celery worker and beat (``sphere.embedded``), the simulated fleet and, with ``--oracle``, the
people of an unattended run. On the embedded topology this is not a shortcut but a need: the
in-process channel layer only reaches pages served by the process that publishes, and the
oracle's verdicts and rollouts publish from here. With ``REDIS_URL`` set the worker and beat
run as their own processes (``--background off``) and the demo still serves the pages.

The story (docs/demo.md): the fleet enrolls and comes online; every device gets the initial
model (digits 0–6); after ``onset`` samples the ``shifted`` devices see washed-out digits and the
``novel`` ones digits 7–9; their monitors fire, drift packages arrive, the operator confirms,
labelers label, the policy starts a training job, the challenger is canaried and rolled out, and
accuracy on the changed streams recovers. Progress lines go to stdout; ``--summary`` writes the
measurements as JSON.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db.models import Count

from devices.models import Device
from drift.models import DriftEvent
from labeling.models import Label, LabelTask
from registry.models import Rollout, RolloutDecision, RolloutStatus, TrainingJob
from sphere.demo import scenario
from sphere.demo.oracle import Oracle
from sphere.demo.simulator import AFTER, BEFORE, GROUPS, DeviceSettings, Fleet, Scenario

log = logging.getLogger(__name__)

CHANGED_GROUPS = ("shifted", "novel")
POLL_S = 0.5
QUIET_LOGGERS = ("celery", "uvicorn", "edge_client", "django.channels", "registry", "labeling", "drift", "devices")


class DemoError(Exception):
    """The demo cannot start or did not finish; the message says why."""


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    groups: dict[str, int] = field(default_factory=lambda: {"control": 4, "shifted": 4, "novel": 4})
    rate: float = 4.0
    onset: int = 150
    oracle: bool = False
    labels_per_second: float = 20.0
    min_new_labels: int = 300
    phases: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    observe_seconds: float = 20.0
    after_samples: int = 300
    heartbeat_s: int = 3
    far_factor: float = 1.0
    background: str = "auto"
    worker_threads: int = 2
    exit_when_done: bool = False
    timeout_s: float = 900.0
    summary_path: Path | None = None
    fleet_dir: Path | None = None
    seed: int = 0
    reuse: bool = False

    @property
    def gates(self) -> dict:
        """Canary gates for a short demo; see docs/demo.md for why each differs from the default."""
        return {
            "min_observation_minutes": self.observe_seconds / 60,
            "min_predictions": 20,
            # The old model is confidently wrong on the changed streams (a 3-neighbour vote among
            # 7 classes), the new one votes among 10: a label-free confidence gate at the default
            # 0.05 halts the better model. See docs/demo.md.
            "max_confidence_drop": 0.2,
            # Every simulated device shares one process: a latency difference is scheduling noise.
            "max_latency_ratio": 5.0,
        }


# --- the pieces that run beside the story -------------------------------------------------------


class WebServer:
    """uvicorn in a thread of this process (signals stay with the main thread)."""

    def __init__(self, host: str, port: int):
        import uvicorn

        config = uvicorn.Config("sphere.asgi:application", host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DemoError(f"the web server did not start on {self.url} (is the port in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class DriftWatch:
    """A browser's view of /ws/live/drift/: when each new drift event reached the page, against
    when its device raised it (both clocks are this machine's)."""

    def __init__(self, ws_url: str, origin: str, session_key: str):
        self.ws_url, self.origin, self.session_key = ws_url, origin, session_key
        self.latencies: list[float] = []
        self.first_at: float | None = None
        self.received: Counter = Counter()  # every message on the feed, by event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drift-watch", daemon=True)
        self.connected = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self.connected.wait(timeout):
            raise DemoError("could not follow the live drift feed")

    def _watch(self) -> None:
        from websockets.sync.client import connect

        headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={self.session_key}"}
        with connect(self.ws_url, origin=self.origin, additional_headers=headers, open_timeout=10) as socket:
            self.connected.set()
            while not self._stop.is_set():
                try:
                    message = json.loads(socket.recv(timeout=0.5))
                except TimeoutError:
                    continue
                self.received[message.get("event")] += 1
                if message.get("event") == "drift.event":
                    self._seen(message["data"])

    def _seen(self, data: dict) -> None:
        arrived = time.time()
        created = datetime.fromisoformat(data["created"]).timestamp()
        self.latencies.append(arrived - created)
        self.first_at = self.first_at or arrived

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def stats(self) -> dict:
        found = sorted(self.latencies)
        if not found:
            return {"events": 0, "received": dict(self.received)}
        return {
            "events": len(found),
            "p50_s": round(statistics.median(found), 3),
            "p95_s": round(found[min(len(found) - 1, round(0.95 * (len(found) - 1)))], 3),
            "max_s": round(found[-1], 3),
        }


def session_for(user) -> str:
    """A signed-in session for ``user`` (what the admin login would create)."""
    from importlib import import_module

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


# --- the demo -----------------------------------------------------------------------------------


class Demo:
    def __init__(self, options: DemoOptions, out=print):
        self.options, self._out = options, out
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}
        self.detections: queue.Queue = queue.Queue()
        self.fleet: Fleet | None = None
        self.server = self.background = self.watch = self.oracle = None
        self.initial = self.new_version = None
        self._seen_decisions = 0
        self._jobs: dict[int, str] = {}
        self._last_report = 0.0
        self._counts: dict[str, object] = {}
        self._counts_at = 0.0

    # --- output ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self._out(f"{self.elapsed():7.1f}s  {message}")

    def mark(self, name: str) -> bool:
        """Note the first time something happened; True the first time."""
        if name in self.marks:
            return False
        self.marks[name] = round(self.elapsed(), 2)
        return True

    # --- the whole run --------------------------------------------------------------------------

    def run(self) -> dict:
        _quiet_logs()
        try:
            self.prepare()
            self.play()
            summary = self.summary()
            self.report(summary)
            if not self.options.exit_when_done:
                self.linger()
            return summary
        finally:
            self.shutdown()

    def prepare(self) -> None:
        options = self.options
        if not options.reuse and Device.objects.exists():
            raise DemoError(
                "this database already has devices: the demo wants a fresh one "
                "(`make demo` uses DATA_DIR=data/demo and recreates it); pass --reuse to play it anyway"
            )
        scenario.speed_up_schedules()
        self.family = scenario.ensure_family()
        self.user = scenario.oracle_user()
        groups = scenario.create_groups(options.heartbeat_s)
        tokens = scenario.create_tokens(groups, options.groups)
        scenario.configure_policy(self.family, min_new_labels=options.min_new_labels)
        self.initial = scenario.register_initial_model(self.family)
        self.say(f"seeded {self.initial.label}: digits 0–6 only, champion of {self.family.name}")
        self._start_services()
        self.fleet = self._fleet(tokens)
        stale = {self.initial.label}
        self.oracle = Oracle(self.fleet.ledger, self.user, self.family, options.phases, options.gates, stale)

    def _start_services(self) -> None:
        options = self.options
        in_process = options.background == "on" or (options.background == "auto" and settings.EMBEDDED_BROKER)
        if in_process:
            from sphere.celery import app
            from sphere.embedded import start_background

            self.background = start_background(app, concurrency=options.worker_threads)
        self.server = WebServer(options.host, options.port)
        self.server.start()
        ws_url = f"ws://{options.host}:{options.port}/ws/live/drift/"
        self.watch = DriftWatch(ws_url, self.server.url, session_for(self.user))
        self.watch.start()
        work = "in this process" if in_process else "in their own processes"
        self.say(f"Sphere at {self.server.url}/ (worker and beat {work}): watch /fleet/, /drift/ and /labeling/")

    def _fleet(self, tokens: dict[str, str]) -> Fleet:
        options = self.options
        fleet_dir = options.fleet_dir or settings.DATA_DIR / "demo-fleet"
        shutil.rmtree(fleet_dir, ignore_errors=True)  # the devices of an earlier run: they would not enroll again
        return Fleet(
            groups=options.groups,
            tokens=tokens,
            data_dir=fleet_dir,
            settings=DeviceSettings(
                server_url=self.server.url,
                rate=options.rate,
                heartbeat_period_s=options.heartbeat_s,
                far_factor=options.far_factor,
            ),
            scenario=Scenario(onset=options.onset),
            seed=options.seed,
            on_detection=self.detections.put,
        )

    def play(self) -> None:
        self._bring_the_fleet_online()
        self._tell_the_story()
        deadline = time.monotonic() + self.options.timeout_s
        while not self.done():
            if time.monotonic() > deadline:
                raise DemoError(f"the loop did not close within {self.options.timeout_s:.0f} s; see the lines above")
            self.step()
            time.sleep(POLL_S)
        self.mark("recovered")
        self.say("the loop is closed: the retrained model serves the whole fleet")
        if self.options.oracle:
            self._oracle_step()  # the verdicts and resolutions of the last events, before the summary

    def _bring_the_fleet_online(self) -> None:
        fleet, initial = self.fleet, self.initial.label
        fleet.start()
        self._wait(lambda: all(device.device_id for device in fleet.devices), "the fleet to enroll")
        self.mark("fleet_enrolled")
        self.say(f"fleet online: {', '.join(f'{n} {g}' for g, n in self.options.groups.items() if n)} devices")
        scenario.roll_out_to_everyone(self.initial, by=self.user)
        self._wait(lambda: fleet.versions().get(initial, 0) == len(fleet.devices), f"every device to run {initial}")
        self.mark("fleet_on_initial_model")

    def _tell_the_story(self) -> None:
        options = self.options
        self.say(f"every device runs {self.initial.label}; each group's stream changes after {options.onset} samples")
        for group in GROUPS:
            if options.groups.get(group):
                self.say(f"  {group:8s} {self.fleet.scenario.describe(group)}")
        if not options.oracle:
            self.say(
                "you are the operator: confirm the drift events on /drift/ and label the queued samples on "
                f"/labeling/; the policy retrains after {options.min_new_labels} new labels"
            )

    def _wait(self, condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            errors = self.fleet.errors()
            if errors:
                raise DemoError(f"simulated devices failed: {errors}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}")
            time.sleep(POLL_S)

    # --- one step of the story ------------------------------------------------------------------

    def step(self) -> None:
        self._device_side()
        if self.options.oracle:
            self._oracle_step()
        self._server_side()
        if time.monotonic() - self._last_report >= 15:
            self._last_report = time.monotonic()
            self.say("accuracy, last 200 samples: " + self._recent_accuracy())

    def _device_side(self) -> None:
        if any(device.samples > self.options.onset for device in self.fleet.devices):
            if self.mark("onset"):
                self.say("the shifted and novel streams change now")
        while not self.detections.empty():
            detection = self.detections.get()
            if detection.drifted:
                self.mark("first_detection")
            when = f"{detection.delay} samples after the onset" if detection.drifted else "before any change"
            self.say(f"drift detected on {detection.device} ({detection.detector}), {when}")
        if self.watch.first_at and self.mark("first_event_on_dashboard"):
            self.say(f"first drift event on /drift/ {self.watch.latencies[0]:.2f} s after its device raised it")

    def _oracle_step(self) -> None:
        confirmed, rejected = self.oracle.judge_drift()
        if confirmed or rejected:
            self.mark("first_verdict")
            self.say(f"oracle operator: {confirmed} drift event(s) confirmed, {rejected} rejected as false alarms")
        self.oracle.label(max(1, round(self.options.labels_per_second * POLL_S * 2)))
        started = self.oracle.release()
        if started is not None:
            self.say(f"oracle release manager: {started.version.label} goes out in phases {started.phases}")
        resolved = self.oracle.resolve_answered_drift()
        if resolved:
            self.say(f"oracle operator: {resolved} confirmed drift event(s) resolved by the rollout")

    def _server_side(self) -> None:
        self._report_counts()
        self._report_jobs()
        self._report_rollouts()

    def _report_counts(self) -> None:
        events = DriftEvent.objects.count()
        labels = Label.objects.filter(task__gold_label="").count()
        tasks = dict(LabelTask.objects.values_list("status").annotate(n=Count("pk")).order_by())
        if events and self.mark("first_event_on_server"):
            self.say("the first drift package is processed: its event is on /drift/")
        if tasks and self.mark("first_task_queued"):
            self.say(f"samples queued for labeling: {sum(tasks.values())}")
        if labels >= self.options.min_new_labels and self.mark("enough_labels"):
            self.say(f"{labels} labels: the policy's minimum ({self.options.min_new_labels}) is reached")
        now = {"events": events, "labels": labels, "tasks": tasks}
        if now != self._counts and time.monotonic() - self._counts_at >= 5:
            self._counts, self._counts_at = now, time.monotonic()
            queued = ", ".join(f"{n} {status}" for status, n in sorted(tasks.items()))
            self.say(f"drift events {events}; labels {labels}; tasks: {queued or 'none'}")

    def _report_jobs(self) -> None:
        for job in TrainingJob.objects.filter(family=self.family).select_related("produced_version"):
            state = f"{job.status}:{job.stage}"
            if self._jobs.get(job.pk) == state:
                continue
            self._jobs[job.pk] = state
            if job.status != "queued" and self.mark("job_started"):
                self.say(f"training job {job.pk} started ({job.trigger}: {job.evidence.get('reason', '')})")
            if job.status in ("promoted", "archived", "failed"):
                self.mark("job_finished")
                produced = getattr(job, "produced_version", None)
                label = produced.label if produced is not None else "no version"
                self.say(f"training job {job.pk} {job.status}: {label} — {job.reason or job.error}")
                if job.status == "promoted" and not self.options.oracle:
                    self.say(f"roll it out: {self.rollout_command()}")

    def _report_rollouts(self) -> None:
        decisions = RolloutDecision.objects.filter(pk__gt=self._seen_decisions).select_related("rollout__version")
        for decision in decisions.order_by("pk"):
            self._seen_decisions = decision.pk
            rollout = decision.rollout
            if rollout.version_id == self.initial.pk or decision.action in ("hold", "assign", "exclude"):
                continue
            if decision.action == "start":
                self.mark("rollout_started")
            self.marks.setdefault(f"rollout_{decision.action}_{decision.phase}", round(self.elapsed(), 2))
            self.say(
                f"rollout of {rollout.version.label}: {decision.action} (phase {decision.phase}) — {decision.reason}"
            )

    def rollout_command(self) -> str:
        phases = ",".join(f"{share:g}" for share in self.options.phases)
        gates = json.dumps(self.options.gates, separators=(",", ":"))
        data_dir = f"DATA_DIR={settings.DATA_DIR} " if settings.USES_SQLITE else ""
        return f"{data_dir}manage.py rollouts start digits@challenger --phases {phases} --gates '{gates}'"

    def _recent_accuracy(self) -> str:
        parts = []
        for group in GROUPS:
            if self.options.groups.get(group):
                value = self.fleet.accuracy.recent(group)
                parts.append(f"{group} {value:.2f}" if value is not None else f"{group} –")
        return ", ".join(parts)

    # --- when the loop is closed ----------------------------------------------------------------

    def done(self) -> bool:
        """The latest rollout (not the first one) completed, and each group has ``after_samples``
        samples of its changed stream (control: of its stream) scored on the new model."""
        rollout = Rollout.objects.filter(family=self.family).exclude(version=self.initial).order_by("-pk").first()
        if rollout is None or rollout.status != RolloutStatus.COMPLETED:
            return False
        self.new_version = rollout.version
        if self.mark("rollout_completed"):
            self.say(f"{rollout.version.label} runs on every device and is the champion")
        label = rollout.version.label
        for group, count in self.options.groups.items():
            phase = AFTER if group in CHANGED_GROUPS else BEFORE
            if count and self.fleet.accuracy.of(group, label, phase)[1] < self.options.after_samples:
                return False
        return True

    def summary(self) -> dict:
        options, fleet = self.options, self.fleet
        marks = self.marks
        first = fleet.first_detections()
        job = TrainingJob.objects.filter(family=self.family).order_by("-pk").first()
        rollout = Rollout.objects.filter(version=self.new_version).first() if self.new_version else None
        return {
            "options": {
                "groups": options.groups,
                "rate": options.rate,
                "onset": options.onset,
                "oracle": options.oracle,
                "min_new_labels": options.min_new_labels,
                "phases": options.phases,
                "observe_seconds": options.observe_seconds,
                "after_samples": options.after_samples,
                "database": "sqlite" if settings.USES_SQLITE else "postgresql",
                "broker": "embedded" if settings.EMBEDDED_BROKER else "redis",
            },
            "initial_version": self.initial.label,
            "new_version": self.new_version.label if self.new_version else None,
            "marks_s": marks,
            "loop_s": _between(marks, "onset", "recovered"),
            "onset_to_rollout_completed_s": _between(marks, "onset", "rollout_completed"),
            "total_s": round(self.elapsed(), 2),
            "drift_to_dashboard": self.watch.stats(),
            "first_detection_delay": {
                group: [first[device.name].delay if first[device.name] else None for device in devices]
                for group, devices in fleet.by_group().items()
            },
            "drift_events": _events_by_group(),
            "labels": Label.objects.filter(task__gold_label="").count(),
            "tasks": dict(LabelTask.objects.values_list("source").annotate(n=Count("pk")).order_by()),
            "job": {"id": job.pk, "status": job.status, "reason": job.reason, "params": job.params} if job else None,
            "rollout": _rollout_summary(rollout),
            "accuracy": self.accuracy_summary(),
            "accuracy_table": fleet.accuracy.table(),
            "fleet": fleet.summary()["devices"],
            "oracle": {
                "confirmed": self.oracle.confirmed,
                "rejected": self.oracle.rejected,
                "labeled": self.oracle.labeled,
                "skipped": len(self.oracle.skipped),
            },
        }

    def accuracy_summary(self) -> dict:
        """Per group, the initial and the new model: on the devices' stream (changed groups:
        after their change) and on the held-out images of the same stream no device ever saw."""
        rows = {(row["group"], row["model_version"], row["phase"]): row for row in self.fleet.accuracy.table()}
        found = {}
        for group, count in self.options.groups.items():
            phase = AFTER if group in CHANGED_GROUPS else BEFORE
            sides = [("before", self.initial), ("after", self.new_version)]
            if count:
                found[group] = {
                    side: {
                        "version": version.label,
                        "stream": {
                            key: rows.get((group, version.label, phase), {}).get(key) for key in ("accuracy", "samples")
                        },
                        "held_out": scenario.holdout_accuracy(version, self.fleet.scenario, group),
                    }
                    for side, version in sides
                    if version is not None
                }
        return found

    def report(self, summary: dict) -> None:
        self.say("accuracy per group, on the stream (changed groups: after their change) and on held-out images")
        for group, sides in summary["accuracy"].items():
            line = "   ".join(
                f"{side} {values['version']}: {_percent(values['stream']['accuracy'])} of {values['stream']['samples']}"
                f" (held out {_percent(values['held_out']['accuracy'])} of {values['held_out']['samples']})"
                for side, values in sides.items()
            )
            self.say(f"  {group:8s} {line}")
        self.say(f"drift event → /drift/ page: {summary['drift_to_dashboard']}")
        self.say(f"onset → recovered: {summary['loop_s']} s; whole run: {summary['total_s']} s")
        if self.options.summary_path:
            Path(self.options.summary_path).write_text(json.dumps(summary, indent=2, default=str) + "\n")
            self.say(f"summary written to {self.options.summary_path}")

    def linger(self) -> None:
        self.say("the fleet keeps running and the pages stay up; Ctrl-C stops the demo")
        try:
            while True:
                self.step()
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            pass

    def shutdown(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.watch is not None:
            self.watch.stop()
        if self.server is not None:
            self.server.stop()
        if self.background is not None:
            self.background.stop()


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _between(marks: dict, start: str, end: str) -> float | None:
    return round(marks[end] - marks[start], 2) if start in marks and end in marks else None


def _events_by_group() -> dict:
    rows = DriftEvent.objects.values_list("device__group__name", "status").annotate(n=Count("pk")).order_by()
    found: dict[str, dict] = {}
    for group, status, n in rows:
        found.setdefault(group or "(none)", {})[status] = n
    return found


def _rollout_summary(rollout: Rollout | None) -> dict | None:
    if rollout is None:
        return None
    decisions = rollout.decisions.order_by("at", "id").values_list("action", "phase", "reason")
    return {
        "id": rollout.pk,
        "status": rollout.status,
        "phases": rollout.phases,
        "decisions": [{"action": a, "phase": p, "reason": r} for a, p, r in decisions if a != "hold"],
    }


def _quiet_logs() -> None:
    """Progress lines are the demo's output: library chatter only when something goes wrong."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
