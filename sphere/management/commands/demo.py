"""``manage.py demo``: the closed loop, live, on a simulated fleet (docs/demo.md).

    manage.py demo --oracle                      # unattended: an oracle confirms, labels, releases
    manage.py demo                               # you confirm drift and label on the pages
    manage.py demo --oracle --exit-when-done --summary summary.json

It serves Sphere at --host/--port (with the worker and beat in-process on the embedded
topology), seeds an initial model of digits 0–6, enrolls the simulated fleet and plays the
scenario, printing each step. Exit codes: 0 the loop closed (and, with --exit-when-done, the
demo ended); 1 it could not start or did not close in --timeout seconds.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from sphere.demo.runner import Demo, DemoError, DemoOptions
from sphere.demo.simulator import parse_groups


def _phases(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--phases {text!r}: comma-separated shares ending at 1, e.g. 0.25,0.5,1") from None


class Command(BaseCommand):
    help = "Serve Sphere and play the closed loop on a simulated fleet (docs/demo.md)."

    def add_arguments(self, parser):
        defaults = DemoOptions()
        parser.add_argument("--host", default=defaults.host)
        parser.add_argument("--port", type=int, default=defaults.port)
        parser.add_argument("--groups", default="control:4,shifted:4,novel:4", help="devices per group")
        parser.add_argument("--rate", type=float, default=defaults.rate, help="samples per second per device")
        parser.add_argument("--onset", type=int, default=defaults.onset, help="samples before a group's stream changes")
        parser.add_argument(
            "--oracle", action="store_true", help="confirm drift, label and roll out from the ground truth (unattended)"
        )
        parser.add_argument("--labels-per-second", type=float, default=defaults.labels_per_second)
        parser.add_argument("--min-new-labels", type=int, default=defaults.min_new_labels, help="the policy's trigger")
        parser.add_argument("--phases", default="0.25,0.5,1", help="the new model's rollout phases (--oracle)")
        parser.add_argument("--observe-seconds", type=float, default=defaults.observe_seconds, help="per phase")
        parser.add_argument(
            "--after-samples", type=int, default=defaults.after_samples, help="per group on the new model before done"
        )
        parser.add_argument("--heartbeat", type=int, default=defaults.heartbeat_s, help="the demo groups' period (s)")
        parser.add_argument("--far-factor", type=float, default=defaults.far_factor, help="devices' quarantine limit")
        parser.add_argument("--background", choices=["auto", "on", "off"], default="auto")
        parser.add_argument("--worker-threads", type=int, default=defaults.worker_threads)
        parser.add_argument("--exit-when-done", action="store_true", help="stop once the loop is closed")
        parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds for the loop to close")
        parser.add_argument("--summary", type=Path, help="write the measurements here as JSON")
        parser.add_argument("--fleet-dir", type=Path, help="devices' data (default DATA_DIR/demo-fleet, recreated)")
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--reuse", action="store_true", help="play on a database that already has devices")

    def handle(self, **options):
        try:
            groups = parse_groups(options["groups"])
        except ValueError as exc:
            raise CommandError(f"--groups: {exc}") from None
        demo_options = DemoOptions(
            host=options["host"],
            port=options["port"],
            groups=groups,
            rate=options["rate"],
            onset=options["onset"],
            oracle=options["oracle"],
            labels_per_second=options["labels_per_second"],
            min_new_labels=options["min_new_labels"],
            phases=_phases(options["phases"]),
            observe_seconds=options["observe_seconds"],
            after_samples=options["after_samples"],
            heartbeat_s=options["heartbeat"],
            far_factor=options["far_factor"],
            background=options["background"],
            worker_threads=options["worker_threads"],
            exit_when_done=options["exit_when_done"],
            timeout_s=options["timeout"],
            summary_path=options["summary"],
            fleet_dir=options["fleet_dir"],
            seed=options["seed"],
            reuse=options["reuse"],
        )
        try:
            Demo(demo_options, out=self._line).run()
        except DemoError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            self._line("demo stopped")

    def _line(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
