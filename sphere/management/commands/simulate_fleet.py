"""``manage.py simulate_fleet``: a fleet of real edge clients against a running Sphere server.

    manage.py simulate_fleet --server http://127.0.0.1:8000 --enrollment-token sphe_… \\
        --groups control:4,shifted:4,novel:4 --rate 4 --duration 300

Each device is the edge client (outbox, adaptive pipeline on the shipped extractor, bundle
manager, sync client) in threads of this process, on a data directory of its own, enrolled with
the token over HTTP (``--enrollment-token GROUP=TOKEN`` puts each group's devices in that
token's device group; a bare token serves every group). Groups and streams: sphere/demo/simulator.py
and docs/demo.md. This command touches no database: point it at any server. Ctrl-C (or
--duration) stops it; the devices send a last heartbeat that takes them offline, and the run
ends with the accuracy per group and model version and each device's first drift detection.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from sphere.demo.simulator import GROUPS, DeviceSettings, Fleet, Scenario, parse_groups, split_evenly


def parse_tokens(values: list[str]) -> dict[str, str]:
    """``["TOKEN"]`` → {"*": TOKEN}; ``["shifted=TOKEN", ...]`` → {"shifted": TOKEN, ...}."""
    tokens: dict[str, str] = {}
    for value in values:
        group, sep, token = value.partition("=")
        if not sep:
            group, token = "*", value
        if group != "*" and group not in GROUPS:
            raise CommandError(f"--enrollment-token {value!r}: unknown group {group!r} ({', '.join(GROUPS)})")
        tokens[group] = token
    return tokens


class Command(BaseCommand):
    help = "Run simulated edge devices (the real edge client, over HTTP) against a Sphere server."

    def add_arguments(self, parser):
        parser.add_argument("--server", required=True, help="base URL of the Sphere server")
        parser.add_argument(
            "--enrollment-token",
            action="append",
            required=True,
            metavar="[GROUP=]TOKEN",
            help="enrollment token for every group, or GROUP=TOKEN per group (repeat)",
        )
        parser.add_argument("--devices", type=int, help="devices in all, spread evenly over the groups")
        parser.add_argument("--groups", help="devices per group, e.g. control:4,shifted:4,novel:4")
        parser.add_argument("--rate", type=float, default=4.0, help="samples per second per device (0: flat out)")
        parser.add_argument("--onset", type=int, default=150, help="samples before a group's stream changes")
        parser.add_argument("--heartbeat", type=float, default=3.0, help="until the server sets the period (s)")
        parser.add_argument("--far-factor", type=float, default=1.0, help="quarantine.far_factor of the devices")
        parser.add_argument("--adapt-every", type=int, default=0, help="on-device adaptation (0: off)")
        parser.add_argument(
            "--wait-for-model", type=float, default=30.0, help="seconds a device waits for an assigned model"
        )
        parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
        parser.add_argument("--data-dir", type=Path, help="devices' data (default: a temporary folder, removed)")
        parser.add_argument("--name-prefix", default="", help="prefix of the device names")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--report-every", type=float, default=15.0, help="seconds between accuracy lines")
        parser.add_argument("--json", action="store_true", help="print the final summary as JSON")

    def handle(self, **options):
        self.started = time.monotonic()
        groups = self._groups(options["devices"], options["groups"])
        fleet = self._fleet(groups, options)
        self._say(f"{sum(groups.values())} devices ({self._counts(groups)}) against {options['server']}")
        fleet.start()
        try:
            self._watch(fleet, options)
        except KeyboardInterrupt:
            pass
        finally:
            self._say("stopping: last heartbeats")
            fleet.stop()
            if options["data_dir"] is None:
                shutil.rmtree(fleet.data_dir, ignore_errors=True)
        self._report(fleet, options["json"])
        if fleet.errors():
            raise CommandError(f"devices failed: {fleet.errors()}")

    def _groups(self, devices: int | None, text: str | None) -> dict[str, int]:
        try:
            groups = parse_groups(text) if text else split_evenly(devices or 3)
        except ValueError as exc:
            raise CommandError(f"--groups: {exc}") from None
        if devices is not None and sum(groups.values()) != devices:
            raise CommandError(f"--devices {devices} but --groups adds up to {sum(groups.values())}")
        return groups

    def _fleet(self, groups: dict[str, int], options) -> Fleet:
        data_dir = options["data_dir"] or Path(tempfile.mkdtemp(prefix="sphere-fleet-"))
        try:
            return Fleet(
                groups=groups,
                tokens=parse_tokens(options["enrollment_token"]),
                data_dir=data_dir,
                settings=DeviceSettings(
                    server_url=options["server"].rstrip("/"),
                    rate=options["rate"],
                    heartbeat_period_s=options["heartbeat"],
                    far_factor=options["far_factor"],
                    adapt_every=options["adapt_every"],
                    wait_for_model_s=options["wait_for_model"],
                ),
                scenario=Scenario(onset=options["onset"]),
                seed=options["seed"],
                name_prefix=options["name_prefix"],
                on_detection=lambda d: self._say(
                    f"drift on {d.device} ({d.detector}) at sample {d.sample}, running {d.model_version or '(shipped)'}"
                ),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _watch(self, fleet: Fleet, options) -> None:
        duration, every = options["duration"], options["report_every"]
        next_report = self.started + every
        while not duration or time.monotonic() - self.started < duration:
            time.sleep(0.5)
            if time.monotonic() >= next_report:
                next_report += every
                self._say(self._recent(fleet))
            if fleet.errors() and all(device.error for device in fleet.devices):
                break

    def _recent(self, fleet: Fleet) -> str:
        versions = ", ".join(f"{v or '(shipped)'} ×{n}" for v, n in sorted(fleet.versions().items()))
        parts = []
        for group in GROUPS:
            value = fleet.accuracy.recent(group)
            if value is not None:
                parts.append(f"{group} {value:.2f}")
        return f"accuracy, last samples: {', '.join(parts) or '–'}; models: {versions}"

    def _report(self, fleet: Fleet, as_json: bool) -> None:
        summary = fleet.summary()
        if as_json:
            self.stdout.write(json.dumps(summary, indent=2, default=str))
            return
        for row in summary["accuracy"]:
            self._say(
                f"{row['group']:8s} {row['model_version']:12s} {row['phase']:6s} "
                f"accuracy {row['accuracy']} on {row['samples']} samples",
            )
        for name, device in summary["devices"].items():
            delay = device["first_detection_delay"]
            shown = f"first drift {delay} samples after the onset" if delay is not None else "no drift after the onset"
            self._say(f"{name}: {device['samples']} samples, {device['drift_events']} drift events, {shown}")

    def _counts(self, groups: dict[str, int]) -> str:
        return ", ".join(f"{n} {group}" for group, n in groups.items() if n)

    def _say(self, text: str) -> None:
        self.stdout.write(f"{time.monotonic() - self.started:7.1f}s  {text}")
        self.stdout.flush()
