"""``manage.py rollouts list|status|start|pause|resume|approve|advance|rollback|cancel``: the
rollout admin's actions for scripts.

    manage.py rollouts start digits@3 --phases 0.1,0.5,1 --group lab --approval
    manage.py rollouts start digits@challenger --device <uuid> --device <uuid>
    manage.py rollouts start digits@3 --filter '{"tags": ["outdoor"]}'
    manage.py rollouts approve digits
    manage.py rollouts status 7

A rollout is given by id, or by family name (that family's newest rollout). Exit codes: 0
done, 1 refused by a rule (the reason on stderr: a live rollout already, a state that does not
allow the action, failing gates), 2 usage error (unknown version, group, device or rollout;
bad phases, gates or filter).
"""

from __future__ import annotations

import json
import uuid

from django.core.exceptions import ValidationError

from registry.management.commands._base import (
    SubcommandCommand,
    add_by_argument,
    find_user,
    refused,
    table,
    usage,
    when,
)
from registry.models import LIVE_ROLLOUT_STATUSES, Rollout, TargetKind

ACTIONS = {
    "pause": "Stop advancing and assigning; devices keep what they were told.",
    "resume": "Continue a paused rollout.",
    "approve": "Start the first phase of a rollout that awaits approval.",
    "advance": "Go to the next phase now (the gates must pass unless --force).",
    "rollback": "Send every device of the rollout back to the baseline.",
    "cancel": "End a rollout that has not completed (devices go back to the baseline).",
}


def find_rollout(ref: str) -> Rollout:
    rollouts = Rollout.objects.select_related("family", "version__family", "baseline__family")
    if ref.isdigit():
        found = rollouts.filter(pk=int(ref)).first()
    else:
        found = rollouts.filter(family__name=ref).order_by("-created", "-id").first()
    if found is None:
        raise usage(f"No rollout {ref!r} (give its id, or a family name for its newest rollout).")
    return found


def find_version(ref: str):
    from registry import versions
    from registry.models import ModelVersion

    if ref.isdigit():
        found = ModelVersion.objects.select_related("family").filter(pk=int(ref)).first()
        if found is None:
            raise usage(f"No version with id {ref}.")
        return found
    family, at, name = ref.partition("@")
    if not at:
        raise usage(f"{ref!r}: give a version as family@number (digits@3), family@alias or its id.")
    try:
        return versions.resolve(family, name)
    except versions.VersionNotFound as exc:
        raise usage(exc)


def parse_phases(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise usage(f"--phases {text!r}: comma-separated shares, e.g. 0.1,0.5,1")


def parse_json(option: str, text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise usage(f"{option}: not JSON ({exc}).")
    if not isinstance(value, dict):
        raise usage(f'{option}: a JSON object, e.g. \'{{"tags": ["lab"]}}\'.')
    return value


def find_groups(names: list[str]):
    from devices.models import DeviceGroup

    found = list(DeviceGroup.objects.filter(name__in=names))
    missing = sorted(set(names) - {group.name for group in found})
    if missing:
        raise usage(f"Unknown device group(s): {', '.join(missing)}.")
    return found


def find_devices(ids: list[str]):
    from devices.models import Device

    try:
        wanted = {uuid.UUID(text) for text in ids}
    except ValueError:
        raise usage("--device takes a device id (UUID).")
    found = list(Device.objects.filter(pk__in=wanted))
    missing = sorted(str(pk) for pk in wanted - {device.pk for device in found})
    if missing:
        raise usage(f"Unknown device(s): {', '.join(missing)}.")
    return found


def target_kind(groups, devices, target_filter) -> str:
    given = [kind for kind, value in ((TargetKind.GROUPS, groups), (TargetKind.DEVICES, devices)) if value]
    if target_filter is not None:
        given.append(TargetKind.FILTER)
    if len(given) > 1:
        raise usage("Give one target: --group (repeatable), --device (repeatable) or --filter; none means all devices.")
    return given[0] if given else TargetKind.ALL


class Command(SubcommandCommand):
    help = "List, inspect, start and steer rollouts of model versions."
    subcommands = {
        "list": "List rollouts, newest first.",
        "status": "Assignments per phase and state, gates and the latest decisions of one rollout.",
        "start": "Start a rollout of a version.",
        **ACTIONS,
    }

    def add_list_arguments(self, parser):
        parser.add_argument("--family", help="Only this model family's rollouts.")
        parser.add_argument("--live", action="store_true", help="Only rollouts awaiting approval, running or paused.")
        parser.add_argument("--limit", type=int, default=20, help="At most this many (default 20).")

    def add_status_arguments(self, parser):
        parser.add_argument("rollout", help="Id, or a family name for its newest rollout.")

    def add_start_arguments(self, parser):
        parser.add_argument("version", help="family@number (digits@3), family@alias (digits@challenger) or an id.")
        parser.add_argument("--phases", help="Cumulative shares ending at 1, e.g. 0.1,0.5,1 (default 0.1,0.5,1).")
        parser.add_argument("--group", action="append", default=[], help="Target this device group (repeatable).")
        parser.add_argument("--device", action="append", default=[], help="Target this device id (repeatable).")
        parser.add_argument("--filter", dest="target_filter", help='A saved filter as JSON: {"tags": ["x"], ...}.')
        parser.add_argument("--gates", help='Gate overrides as JSON, e.g. {"max_failed": 2}.')
        parser.add_argument("--approval", action="store_true", help="Wait for an operator's approval first.")
        parser.add_argument("--no-auto-advance", action="store_true", help="Advance only by hand.")
        parser.add_argument("--no-auto-rollback", action="store_true", help="Pause instead of rolling back.")
        parser.add_argument("--download-timeout", type=int, default=30, help="Minutes per download (default 30).")
        parser.add_argument("--name", default="", help="A name for the rollout.")
        add_by_argument(parser)

    def add_subcommand_arguments(self, name: str, parser) -> None:
        if name not in ACTIONS:
            return super().add_subcommand_arguments(name, parser)
        parser.add_argument("rollout", help="Id, or a family name for its newest rollout.")
        if name in ("pause", "rollback", "cancel"):
            parser.add_argument("--reason", default="", help="Recorded with the decision.")
        if name == "advance":
            parser.add_argument("--force", action="store_true", help="Advance even if the gates do not pass.")
        add_by_argument(parser)

    def run_subcommand(self, name: str, options: dict) -> None:
        if name in ACTIONS:
            return self._act(name, **options)
        return super().run_subcommand(name, options)

    # --- reading ---

    def do_list(self, *, family=None, live=False, limit=20, **options):
        rollouts = Rollout.objects.select_related("family", "version__family").order_by("-created", "-id")
        if family:
            rollouts = rollouts.filter(family__name=family)
        if live:
            rollouts = rollouts.filter(status__in=LIVE_ROLLOUT_STATUSES)
        rows = [
            [r.pk, r.family.name, r.version.label, r.status, _phase(r), r.target_kind, when(r.created), r.name or None]
            for r in rollouts[: max(limit, 1)]
        ]
        if not rows:
            self.say("No rollouts.")
            return
        self.say(table(rows, ["id", "family", "version", "status", "phase", "target", "created", "name"]))

    def do_status(self, *, rollout, **options):
        self._status(find_rollout(rollout))

    def _status(self, rollout: Rollout) -> None:
        from registry.rollouts import rollout_summary

        summary = rollout_summary(rollout)
        baseline = summary["baseline"] or "none"
        self.say(f"Rollout {rollout.pk} ({rollout}): {summary['version']} (baseline {baseline}), {rollout.status}")
        self.say(
            f"Phase {_phase(rollout)}; target {rollout.target_kind}" + (f"; {rollout.reason}" if rollout.reason else "")
        )
        states = list(summary["totals"])
        rows = [
            [i + 1, f"{phase['share']:.0%}", *(phase["counts"].get(state, 0) for state in states)]
            for i, phase in enumerate(summary["phases"])
        ]
        rows.append(["all", "", *(summary["totals"][state] for state in states)])
        self.say(table(rows, ["phase", "share", *states]))
        decisions = rollout.decisions.select_related("by").order_by("-at", "-id")[:5]
        if decisions:
            self.say("Latest decisions:")
            self.say(
                table(
                    [[when(d.at), d.action, d.phase + 1, d.by or "auto", d.reason] for d in decisions],
                    ["at", "action", "phase", "by", "reason"],
                )
            )

    # --- changing ---

    def do_start(self, **options):
        from registry.rollouts import RolloutError, start_rollout

        version = find_version(options["version"])
        groups, devices = find_groups(options["group"]), find_devices(options["device"])
        target_filter = parse_json("--filter", options["target_filter"])
        try:
            rollout = start_rollout(
                version,
                target_kind=target_kind(groups, devices, target_filter),
                groups=groups,
                devices=devices,
                target_filter=target_filter,
                phases=parse_phases(options["phases"]),
                gates=parse_json("--gates", options["gates"]),
                require_approval=options["approval"],
                auto_advance=not options["no_auto_advance"],
                auto_rollback=not options["no_auto_rollback"],
                download_timeout_minutes=options["download_timeout"],
                name=options["name"],
                by=find_user(options["by"]),
            )
        except ValidationError as exc:
            raise usage("; ".join(f"{name}: {' '.join(errors)}" for name, errors in _errors(exc).items()))
        except RolloutError as exc:
            raise refused(exc)
        self.say(f"Started rollout {rollout.pk} of {version.label}.")
        self._status(rollout)

    def _act(self, verb: str, *, rollout, by=None, reason="", force=False, **options):
        from registry import rollouts

        found, user = find_rollout(rollout), find_user(by)
        reason = reason or f"{verb} from the command line"
        calls = {
            "pause": lambda: rollouts.pause(found, by=user, reason=reason),
            "resume": lambda: rollouts.resume(found, by=user),
            "approve": lambda: rollouts.approve(found, by=user),
            "advance": lambda: rollouts.advance(found, by=user, force=force),
            "rollback": lambda: rollouts.rollback(found, by=user, reason=reason),
            "cancel": lambda: rollouts.cancel(found, by=user, reason=reason),
        }
        try:
            calls[verb]()
        except rollouts.RolloutError as exc:
            raise refused(exc)
        self.say(f"Rollout {found.pk}: {verb} done; now {found.status}, phase {_phase(found)}.")


def _phase(rollout: Rollout) -> str:
    phases = rollout.phases if isinstance(rollout.phases, list) else []
    share = phases[rollout.phase] if rollout.phase < len(phases) else None
    return f"{rollout.phase + 1}/{len(phases)}" + (f" ({share:.0%})" if share is not None else "")


def _errors(exc: ValidationError) -> dict:
    return exc.message_dict if hasattr(exc, "error_dict") else {"error": exc.messages}
