"""A simulated fleet: N edge clients in one process, over HTTP, with known ground truth.

Each ``SimulatedDevice`` is the edge client as ``python -m edge_client run`` wires it — its own
data directory, SQLite outbox (``Store``), ``AdaptivePipeline`` on the shipped TFLite extractor,
``BundleManager`` and ``SyncClient`` in a thread of its own — enrolled with an enrollment token
like a real device. Threads, not processes: the extractor and numpy release the GIL for most of
a sample, a device costs a few MB instead of ~60 MB, and the simulator sees every record its
devices write, which is how it knows what the server cannot:

- **Groups** (``Scenario.stream``): ``control`` sees the digits the first model knows (0–6),
  unchanged; ``shifted`` sees the same digits washed out (contrast × 0.2: a fogged lens) from
  ``onset`` on; ``novel`` sees digits the first model never learned (7–9) from ``onset`` on.
  Streams are ``edge_client.datagen`` generators over half of the shipped digits' test split
  (the "field"); the other half (``Scenario.holdout``) never reaches a device, so a model
  scored on it cannot have been trained on its images.
- **Ledger**: every prediction, drift event and quarantined sample a device appends to its
  outbox is recorded under its record id with the truth of the sample being processed
  (``Truth``): its class, its group, whether it came after the group's change, and a digest
  of the image. The server stores the same ids (``DriftSample.client_id``,
  ``PredictionLog.client_id``), so the oracle (``sphere.demo.oracle``) can answer for them.
- **Accuracy**: every sample's prediction is scored against its class, per group, model
  version and phase (before / after the onset).

No Django here: the simulator drives any Sphere server (``manage.py simulate_fleet``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_client import config as config_module
from edge_client import datagen
from edge_client import http as default_http
from edge_client import sync as sync_module
from edge_client.bundles import BundleManager
from edge_client.pipeline import AdaptivePipeline
from edge_client.serving import ServingPipeline, ShuttingDownTelemetry
from edge_client.store import DRIFT_EVENT, METRIC, Store
from edge_client.telemetry import Telemetry

log = logging.getLogger(__name__)

GROUPS = ("control", "shifted", "novel")
KNOWN_CLASSES = tuple(range(7))
NOVEL_CLASSES = (7, 8, 9)
# datagen streams are generators of a given length: long enough never to end.
ENDLESS = 10**12
BEFORE, AFTER = "before", "after"
RECENT = 200  # samples per group in the rolling accuracy


# --- the scenario -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What each group sees. ``onset``: samples of a device's stream before its group changes."""

    onset: int = 150
    shift: str = "contrast"
    amount: float = 0.2
    known: tuple[int, ...] = KNOWN_CLASSES
    novel: tuple[int, ...] = NOVEL_CLASSES

    def stream(self, group: str, seed: int) -> Iterator[tuple]:
        """``(image, label, meta)`` forever from the field half; ``meta["phase"]`` is
        ``drifted`` after the onset."""
        schedule = datagen.DriftSchedule("abrupt", onset=self.onset)
        field = field_digits()
        if group == "control":
            return datagen.image_stream(ENDLESS, classes=self.known, seed=seed, digits=field)
        if group == "shifted":
            return datagen.image_stream(
                ENDLESS, self.shift, self.amount, schedule, classes=self.known, seed=seed, digits=field
            )
        if group == "novel":
            return datagen.novel_class_stream(
                ENDLESS, schedule, known=self.known, novel=self.novel, seed=seed, digits=field
            )
        raise ValueError(f"unknown group {group!r}; expected one of {', '.join(GROUPS)}")

    def holdout(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of what ``group`` sees after its onset, from the test half no device
        streams: the honest test set for any model trained on what the devices sent."""
        digits = datagen.load_digits_sample()
        index = np.setdiff1d(digits.test_index, field_digits().test_index)
        classes = self.novel if group == "novel" else self.known
        index = index[np.isin(digits.labels[index], list(classes))]
        images = digits.images[index].astype(np.float64)
        if group == "shifted":
            images = np.stack([datagen.apply_shift(image, self.shift, self.amount) for image in images])
        return images, digits.labels[index].astype(np.int64)

    def describe(self, group: str) -> str:
        known = f"{min(self.known)}–{max(self.known)}"
        return {
            "control": f"digits {known}, unchanged",
            "shifted": f"digits {known}, {self.shift} × {self.amount:g} after {self.onset} samples",
            "novel": f"digits {', '.join(map(str, self.novel))} (never learned) after {self.onset} samples",
        }[group]


@functools.lru_cache(maxsize=1)
def field_digits() -> datagen.DigitsSample:
    """The shipped digits with every other test image as the split devices stream from."""
    digits = datagen.load_digits_sample()
    return digits._replace(test_index=digits.test_index[::2])


def parse_groups(text: str) -> dict[str, int]:
    """``control:4,shifted:4,novel:4`` → {"control": 4, ...}; unknown groups and bad counts raise."""
    counts: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, number = part.partition(":")
        if name not in GROUPS or not number.isdigit():
            raise ValueError(f"{part!r}: expected <group>:<count> with a group among {', '.join(GROUPS)}")
        counts[name] = counts.get(name, 0) + int(number)
    if not sum(counts.values()):
        raise ValueError("no devices: give at least one group a count above 0")
    return counts


def split_evenly(devices: int) -> dict[str, int]:
    """``devices`` spread over the groups, the first ones getting the remainder."""
    base, extra = divmod(devices, len(GROUPS))
    return {group: base + (i < extra) for i, group in enumerate(GROUPS)}


# --- ground truth -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    device: str
    group: str
    label: int
    drifted: bool  # from the group's changed stream (the onset has passed)
    sample: int  # index in the device's stream
    image: str  # digest of the input image: the same image drawn twice has the same digest


@dataclass(frozen=True)
class Detection:
    """A drift event as the device raised it."""

    device: str
    group: str
    detector: str
    event_id: str
    sample: int
    onset: int
    drifted: bool
    model_version: str
    at: float  # time.time() when the device appended it

    @property
    def delay(self) -> int | None:
        """Samples after the onset (None when raised before it)."""
        return self.sample - self.onset if self.drifted else None


class Ledger:
    """The truth of every record the fleet's devices wrote, by record id (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._records: dict[str, tuple[str, Truth]] = {}
        self.counts: Counter = Counter()

    def record(self, kind: str, item_id: str, truth: Truth) -> None:
        with self._lock:
            self._records[item_id] = (kind, truth)
            self.counts[kind] += 1

    def truth(self, item_id) -> Truth | None:
        with self._lock:
            found = self._records.get(str(item_id))
        return found[1] if found else None

    def kind(self, item_id) -> str | None:
        with self._lock:
            found = self._records.get(str(item_id))
        return found[0] if found else None


class Accuracy:
    """Correct / total per (group, model version, phase), and each group's last ``RECENT``
    samples (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=RECENT))

    def add(self, group: str, version: str, phase: str, correct: bool) -> None:
        with self._lock:
            counts = self._counts[(group, version, phase)]
            counts[0] += correct
            counts[1] += 1
            self._recent[group].append(correct)

    def of(self, group: str, version: str, phase: str) -> tuple[float | None, int]:
        with self._lock:
            correct, total = self._counts.get((group, version, phase), (0, 0))
        return (correct / total if total else None), total

    def recent(self, group: str) -> float | None:
        with self._lock:
            window = self._recent.get(group)
            return sum(window) / len(window) if window else None

    def table(self) -> list[dict]:
        """One row per (group, version, phase) seen, in group order."""
        with self._lock:
            items = sorted(self._counts.items(), key=lambda kv: (_group_order(kv[0][0]), kv[0][1], kv[0][2]))
            return [
                {
                    "group": group,
                    "model_version": version or "(shipped)",
                    "phase": phase,
                    "samples": total,
                    "accuracy": round(correct / total, 4) if total else None,
                }
                for (group, version, phase), (correct, total) in items
            ]


def _group_order(group: str) -> int:
    return GROUPS.index(group) if group in GROUPS else len(GROUPS)


def image_digest(image) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=8).hexdigest()


# --- one device -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSettings:
    """What every simulated device shares."""

    server_url: str
    rate: float = 5.0  # samples per second; 0: as fast as possible
    heartbeat_period_s: float = 2.0  # until the server's desired state says otherwise
    far_factor: float = 1.0  # edge_client config quarantine.far_factor
    wait_for_model_s: float = 120.0  # stream only once the fleet's model is served (0: at once)
    enroll_timeout_s: float = 60.0  # keep trying while the server is not up yet
    request_timeout_s: float = 10.0
    backoff_max_s: float = 10.0  # a simulated outage should not park a device for minutes
    # On-device adaptation (AdaptivePipeline.adapt_every; 0: off). Off by default: a confidently
    # wrong model pseudo-labels a compact shifted cluster with the wrong class, and the samples it
    # absorbed stop looking far, so they stop reaching the server for labels (docs/demo.md).
    adapt_every: int = 0


class _LedgerStore(Store):
    """The device's outbox, telling its device of each record appended (the truth is known only
    while that device processes the sample the record is about)."""

    listener: Callable[[str, str, dict], None] | None = None

    def append(self, kind, payload, **kwargs):
        item_id = super().append(kind, payload, **kwargs)
        if kind != METRIC and self.listener is not None:
            self.listener(kind, item_id, payload)
        return item_id


class SimulatedDevice:
    """One edge client fed ``scenario``'s stream for ``group``. ``prepare()`` enrolls it and
    builds its parts; ``step()`` processes one sample; ``start()`` runs both in threads."""

    def __init__(
        self,
        name: str,
        group: str,
        *,
        enrollment_token: str,
        data_dir: Path,
        settings: DeviceSettings,
        scenario: Scenario,
        ledger: Ledger,
        accuracy: Accuracy,
        seed: int,
        on_detection: Callable[[Detection], None] | None = None,
        http=default_http,
    ):
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; expected one of {', '.join(GROUPS)}")
        self.name, self.group, self.enrollment_token = name, group, enrollment_token
        self.data_dir, self.settings, self.scenario = Path(data_dir), settings, scenario
        self.ledger, self.accuracy, self.seed = ledger, accuracy, seed
        self.on_detection, self.http = on_detection, http
        self.device_id = ""
        self.samples = 0
        self.error = ""
        self.detections: list[Detection] = []
        self.stop_event = threading.Event()
        self._current: Truth | None = None
        self.stream: Iterator[tuple] | None = None
        self._threads: list[threading.Thread] = []
        self.store = self.pipeline = self.bundles = self.sync = self.serving = self.telemetry = None

    # --- setting up -----------------------------------------------------------------------------

    def config(self) -> config_module.Config:
        settings = self.settings
        return config_module.from_dict(
            {
                "server_url": settings.server_url,
                "data_dir": str(self.data_dir),
                "device_name": self.name,
                "sync": {
                    "heartbeat_period_s": settings.heartbeat_period_s,
                    "request_timeout_s": settings.request_timeout_s,
                    "backoff_max_s": settings.backoff_max_s,
                },
                "quarantine": {"far_factor": settings.far_factor},
            }
        )

    def prepare(self) -> None:
        """Enroll (once) and build the outbox, pipeline, bundle manager and sync client."""
        config = self.config()
        self.device_id = self._enroll(config)
        self.store = _LedgerStore.from_config(config)
        self.store.listener = self._note
        self.telemetry = Telemetry.from_config(config)
        self.pipeline = AdaptivePipeline.from_config(config, store=self.store, telemetry=self.telemetry)
        self.pipeline.adapt_every = self.settings.adapt_every
        self.serving = ServingPipeline(self.pipeline)
        self.bundles = BundleManager.from_config(config, loader=self.serving.load, http=self.http)
        self.serving.bundles = self.bundles
        self.bundles.load_current()
        self.sync = sync_module.SyncClient.from_config(
            config,
            self.store,
            telemetry=self.telemetry,
            bundles=self.bundles,
            on_verdict=self.pipeline.apply_verdict,
            http=self.http,
        )
        self.stream = self.scenario.stream(self.group, self.seed)

    def _enroll(self, config) -> str:
        token_file = config.path(config.token_file)
        if token_file.exists():  # enrolled in an earlier run of this data directory
            return ""
        deadline = time.monotonic() + self.settings.enroll_timeout_s
        while True:
            try:
                enrolled = sync_module.enroll(
                    config.server_url,
                    self.enrollment_token,
                    self.name,
                    token_file=token_file,
                    http=self.http,
                    timeout_s=self.settings.request_timeout_s,
                    tags=["simulated", self.group],
                )
                return enrolled.device_id
            except default_http.TransportError:
                if time.monotonic() > deadline or self.stop_event.wait(0.5):
                    raise

    def wait_for_model(self) -> str:
        """Sync until the server assigns a model and it is serving (or the wait runs out); the
        device then streams on it from its first sample. Returns the serving version."""
        deadline = time.monotonic() + self.settings.wait_for_model_s
        while not self.stop_event.is_set():
            report = self.sync.sync_once(heartbeat=True)
            if self.pipeline.model_version or time.monotonic() >= deadline:
                break
            self.stop_event.wait(0.5 if report.ok else 1.0)
        return self.pipeline.model_version

    # --- running --------------------------------------------------------------------------------

    def step(self) -> bool:
        """Process the next sample of the stream; returns whether it was correct."""
        image, label, meta = next(self.stream)
        digest = image_digest(image)
        truth = Truth(
            self.name, self.group, int(label), meta.get("phase") in ("drifted", "transition"), self.samples, digest
        )
        self._current = truth
        try:
            result = self.serving.process(image)
        finally:
            self._current = None
        correct = int(result.label) == truth.label
        phase = AFTER if truth.drifted else BEFORE
        self.accuracy.add(self.group, self.pipeline.model_version, phase, correct)
        self.samples += 1
        return correct

    def _note(self, kind: str, item_id: str, payload: dict) -> None:
        truth = self._current
        if truth is None:  # not written while processing a sample
            return
        self.ledger.record(kind, item_id, truth)
        if kind == DRIFT_EVENT:
            detection = Detection(
                device=self.name,
                group=self.group,
                detector=payload.get("detector", ""),
                event_id=item_id,
                sample=truth.sample,
                onset=self.scenario.onset,
                drifted=truth.drifted,
                model_version=payload.get("model_version", ""),
                at=time.time(),
            )
            self.detections.append(detection)
            if self.on_detection is not None:
                self.on_detection(detection)

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name=f"device-{self.name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        try:
            self.prepare()
            self.wait_for_model()
            sync = threading.Thread(
                target=self.sync.run, args=(self.stop_event,), name=f"sync-{self.name}", daemon=True
            )
            self._threads.append(sync)
            sync.start()
            self._stream()
        except Exception as exc:  # a device that fails must not take the fleet down with it
            log.exception("simulated device %s stopped", self.name)
            self.error = f"{type(exc).__name__}: {exc}"

    def _stream(self) -> None:
        period = 1.0 / self.settings.rate if self.settings.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.step()
            next_at += period
            if period and self.stop_event.wait(max(0.0, next_at - time.monotonic())):
                break

    def stop(self, timeout: float = 15.0) -> None:
        """Stop streaming and syncing, send a last heartbeat saying so, close the outbox."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.sync is not None and not self.sync.problem:
            self.sync.telemetry = ShuttingDownTelemetry(self.telemetry)
            try:
                self.sync.sync_once(heartbeat=True)
            except Exception as exc:  # the server may be gone already
                log.info("%s: last heartbeat not delivered: %s", self.name, exc)
        if self.store is not None:
            self.store.close()

    @property
    def model_version(self) -> str:
        return self.pipeline.model_version if self.pipeline is not None else ""


# --- the fleet --------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Devices per group, each enrolled with its group's token (or the one token for all)."""

    groups: dict[str, int]
    tokens: dict[str, str]  # group -> enrollment token; "*" for every group
    data_dir: Path
    settings: DeviceSettings
    scenario: Scenario = field(default_factory=Scenario)
    seed: int = 0
    name_prefix: str = ""
    on_detection: Callable[[Detection], None] | None = None
    http: object = default_http
    ledger: Ledger = field(default_factory=Ledger)
    accuracy: Accuracy = field(default_factory=Accuracy)
    devices: list[SimulatedDevice] = field(default_factory=list)

    def __post_init__(self):
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r}; expected one of {', '.join(GROUPS)}")
        for group, count in self.groups.items():
            if count and self.token_for(group) is None:
                raise ValueError(f"no enrollment token for group {group!r}")
        self.data_dir = Path(self.data_dir)
        index = 0
        for group in GROUPS:
            for number in range(1, self.groups.get(group, 0) + 1):
                name = f"{self.name_prefix}{group}-{number:02d}"
                self.devices.append(
                    SimulatedDevice(
                        name,
                        group,
                        enrollment_token=self.token_for(group),
                        data_dir=self.data_dir / name,
                        settings=self.settings,
                        scenario=self.scenario,
                        ledger=self.ledger,
                        accuracy=self.accuracy,
                        seed=self.seed * 1000 + index,
                        on_detection=self._detected,
                        http=self.http,
                    )
                )
                index += 1
        self._lock = threading.Lock()
        self.detections: list[Detection] = []

    def token_for(self, group: str) -> str | None:
        return self.tokens.get(group) or self.tokens.get("*")

    def _detected(self, detection: Detection) -> None:
        with self._lock:
            self.detections.append(detection)
        if self.on_detection is not None:
            self.on_detection(detection)

    def start(self) -> None:
        for device in self.devices:
            device.start()

    def stop(self) -> None:
        for device in self.devices:
            device.stop_event.set()
        for device in self.devices:
            device.stop()

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- what it saw ----------------------------------------------------------------------------

    def by_group(self) -> dict[str, list[SimulatedDevice]]:
        found: dict[str, list[SimulatedDevice]] = {}
        for device in self.devices:
            found.setdefault(device.group, []).append(device)
        return found

    def errors(self) -> dict[str, str]:
        return {device.name: device.error for device in self.devices if device.error}

    def versions(self) -> Counter:
        return Counter(device.model_version for device in self.devices)

    def first_detections(self) -> dict[str, Detection | None]:
        """Each device's first drift event after its onset."""
        first: dict[str, Detection | None] = {device.name: None for device in self.devices}
        for detection in sorted(self.detections, key=lambda d: d.at):
            if detection.drifted and first.get(detection.device) is None:
                first[detection.device] = detection
        return first

    def samples_after(self, group: str, version: str) -> int:
        return self.accuracy.of(group, version, AFTER)[1]

    def summary(self) -> dict:
        detections = self.first_detections()
        return {
            "devices": {
                device.name: {
                    "group": device.group,
                    "device_id": device.device_id,
                    "samples": device.samples,
                    "model_version": device.model_version,
                    "drift_events": len(device.detections),
                    "drift_events_by_version": dict(Counter(d.model_version for d in device.detections)),
                    "events_before_onset": sum(1 for d in device.detections if not d.drifted),
                    "first_detection_delay": detections[device.name].delay if detections[device.name] else None,
                    "error": device.error,
                }
                for device in self.devices
            },
            "accuracy": self.accuracy.table(),
            "ledger": dict(self.ledger.counts),
        }
