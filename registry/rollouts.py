"""Rollouts: send a model version to the devices of a target in phases, gated by install success
and model health, and take it back from the whole fleet when a gate fails.

Targets. All devices, groups, a list, or a saved filter (``group``, ``tags`` — all must match —
``hardware``, ``location``, ``status``). The target is matched again on every tick, so devices
that join it later are included: a running rollout assigns them within the current phase's
share; a completed one assigns every joiner until a newer rollout of the family supersedes it.

Phases. Cumulative shares of the eligible target (``[1.0]`` is an immediate rollout, ``[0.05,
0.25, 1.0]`` a canary). Devices are ordered by ``sha256("<rollout id>:<device id>")``; phase i
covers the first ``ceil(share × N)`` of the N eligible devices, so every phase adds devices and
the order is stable across ticks and processes.

Preflight. A device whose reported memory (``runtime.memory_total_mb``) or runtime versions
(``python``, ``numpy``, ``litert``, ``client``, compared numerically) are below what the version
declares, or that does not report them, gets an ``excluded`` assignment with the reason. Excluded
devices count toward no gate and get no model from this rollout; they are checked again on each
tick, and join once they report what the version needs.

Assignments. assigned → downloading → active | failed, and rolled back. The desired state
carries the assignment; its first delivery sets the deadline (``download_timeout_minutes``),
past which an assignment still in progress fails as timed out. A device that was offline gets
its assignment on its next sync, whatever phase the rollout reached meanwhile. The heartbeat
moves the state: the serving version equal to the assigned one → active; a bundle outcome
``refused`` / ``rolled_back`` for it → failed.

Gates (``Rollout.gates``, see registry.models.default_gates), judged once the phase has been
observed ``min_observation_minutes``: the share of this phase's delivered assignments that
reported an outcome (``min_reporting_share``); install success over the whole rollout
(``min_install_success``, ``max_failed``); and, before the last phase, model health of the
canary (devices active on the new version) against the control (target devices still on the
baseline) since the phase began — drift events per device-hour (the canary may exceed the
control's rate × ``max_drift_rate_ratio`` by ``drift_events_floor`` events, default 3, so a quiet
control does not fail on one event), mean confidence and mean latency of their predictions, with
at least ``min_predictions`` on each side. Without enough evidence the rollout holds. Passing
gates advance it (or wait for an operator without ``auto_advance``); the last phase completes it
and makes its version the champion. A failing gate halts it with a fleet rollback to the
baseline (or pauses it without ``auto_rollback``). A cancelled rollout sends its devices back to
the baseline too, without the ``rollout_halted`` alert (registry.alerts).

Every decision — start, approve, advance, hold, halt, rollback, pause, resume, complete, cancel,
timeout, exclude, assign — is a RolloutDecision with the numbers behind it. The tick works on
sets (a handful of queries whatever the fleet size), and the sync path costs one indexed query.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Avg, Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from packaging.version import InvalidVersion, Version

from devices.models import Device, DeviceStatus, PredictionLog
from drift.models import DriftEvent
from registry import versions
from registry.models import (
    CHAMPION,
    IN_PROGRESS_STATES,
    LIVE_ROLLOUT_STATUSES,
    AssignmentState,
    ModelFamily,
    ModelVersion,
    Rollout,
    RolloutAssignment,
    RolloutDecision,
    RolloutStatus,
    TargetKind,
    VersionStatus,
    default_gates,
    default_phases,
)
from sphere import live

ROLLOUT_TOPIC = "registry"
FILTER_KEYS = ("group", "tags", "hardware", "location", "status")
RUNTIME_NAMES = ("python", "numpy", "litert", "client")
# Drift events a canary may have beyond what its control's rate × ratio allows: without them a
# quiet control (rate 0) would fail the gate on the canary's first event.
DRIFT_EVENTS_FLOOR = 3
GATE_KEYS = (*default_gates(), "drift_events_floor")
SHARE_GATES = ("min_install_success", "min_reporting_share")
# Rollouts whose assignments reach devices; in the recalled ones they point back to the baseline.
SERVED_STATUSES = (
    RolloutStatus.RUNNING,
    RolloutStatus.PAUSED,
    RolloutStatus.COMPLETED,
    RolloutStatus.HALTED,
    RolloutStatus.CANCELLED,
)
RECALLED_STATUSES = (RolloutStatus.HALTED, RolloutStatus.CANCELLED)
# A newer rollout in one of these takes joiners over from a completed one.
SUPERSEDING_STATUSES = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.COMPLETED)
FAILED_OUTCOMES = ("refused", "rolled_back")
# Tick actions that changed something an operator's page shows.
CHANGING_ACTIONS = ("advanced", "completed", "halted", "paused", "assigned")
EVIDENCE_DEVICES = 50  # device ids listed in one decision's evidence at most
BULK_BATCH = 500
# The heartbeat receiver leaves the device's assignment here for the desired state answered
# right after it in the same request, which then needs no query of its own.
_CACHE = "_registry_rollout_assignment"
_MISSING = object()
_DEFAULT = object()


class RolloutError(Exception):
    """An action the rollout's state does not allow; the message says why."""


# --- starting ---------------------------------------------------------------------------------


def start_rollout(
    version: ModelVersion,
    *,
    target_kind: str = TargetKind.ALL,
    groups=(),
    devices=(),
    target_filter: dict | None = None,
    phases: list | None = None,
    gates: dict | None = None,
    require_approval: bool = False,
    auto_advance: bool = True,
    auto_rollback: bool = True,
    name: str = "",
    by=None,
    baseline=_DEFAULT,
    download_timeout_minutes: int = 30,
) -> Rollout:
    """Create a rollout of ``version`` and assign its first phase (unless it awaits approval).
    ``baseline`` defaults to the family's champion when that is another version."""
    _check_version(version)
    baseline = default_baseline(version) if baseline is _DEFAULT else baseline
    _check_baseline(version, baseline)
    groups, devices = list(groups), list(devices)
    rollout = Rollout(
        family=version.family,
        version=version,
        baseline=baseline,
        name=name,
        status=RolloutStatus.AWAITING_APPROVAL if require_approval else RolloutStatus.RUNNING,
        target_kind=_check_target(target_kind, groups, devices),
        target_filter=validate_filter(target_filter or {}) if target_kind == TargetKind.FILTER else {},
        phases=list(phases) if phases is not None else default_phases(),
        gates=validate_gates(gates or {}),
        auto_advance=auto_advance,
        auto_rollback=auto_rollback,
        require_approval=require_approval,
        download_timeout_minutes=download_timeout_minutes,
        created_by=by,
    )
    rollout.clean()
    now = timezone.now()
    with transaction.atomic():
        _save_new(rollout, groups, devices)
        _decide(
            rollout, "start", by=by, manual=True, reason=f"Roll {version.label} out.", evidence=_start_evidence(rollout)
        )
        if not require_approval:
            _begin(rollout, now)
    _publish(rollout, "start")
    return rollout


def default_baseline(version: ModelVersion) -> ModelVersion | None:
    champion = versions.alias_version(version.family, CHAMPION)
    return champion if champion is not None and champion.pk != version.pk else None


def _check_version(version: ModelVersion) -> None:
    if version.status == VersionStatus.ARCHIVED:
        raise RolloutError(f"{version.label} is archived and cannot be rolled out.")
    for runtime_name, minimum in (version.runtime or {}).items():
        if runtime_name not in RUNTIME_NAMES or _parse(minimum) is None:
            raise RolloutError(f"{version.label} declares an unusable runtime minimum {runtime_name}={minimum!r}.")


def _check_baseline(version: ModelVersion, baseline: ModelVersion | None) -> None:
    if baseline is None:
        return
    if baseline.pk == version.pk:
        raise RolloutError("The baseline must be another version than the one rolled out.")
    if baseline.family_id != version.family_id:
        raise RolloutError(f"The baseline {baseline.label} is not a version of {version.family.name}.")


def _check_target(kind: str, groups: list, devices: list) -> str:
    if kind not in TargetKind.values:
        raise ValidationError({"target_kind": f"Unknown target {kind!r}; one of {', '.join(TargetKind.values)}."})
    if kind == TargetKind.GROUPS and not groups:
        raise ValidationError({"target_groups": "A rollout to groups needs at least one group."})
    if kind == TargetKind.DEVICES and not devices:
        raise ValidationError({"target_devices": "A rollout to a list of devices needs at least one device."})
    return kind


def _save_new(rollout: Rollout, groups: list, devices: list) -> None:
    live_one = Rollout.objects.filter(family=rollout.family, status__in=LIVE_ROLLOUT_STATUSES).first()
    if live_one is not None:
        raise RolloutError(f"{rollout.family.name} already has a live rollout ({live_one}): finish or cancel it first.")
    try:
        with transaction.atomic():
            rollout.save()
    except IntegrityError:  # the unique constraint: another start won the race
        raise RolloutError(f"{rollout.family.name} already has a live rollout.")
    if rollout.target_kind == TargetKind.GROUPS:
        rollout.target_groups.set(groups)
    elif rollout.target_kind == TargetKind.DEVICES:
        rollout.target_devices.set(devices)


def _start_evidence(rollout: Rollout) -> dict:
    return {
        "version": rollout.version.label,
        "baseline": rollout.baseline.label if rollout.baseline else None,
        "target": describe_target(rollout),
        "phases": rollout.phases,
        "gates": rollout.gates,
        "require_approval": rollout.require_approval,
        "auto_advance": rollout.auto_advance,
        "auto_rollback": rollout.auto_rollback,
    }


def _begin(rollout: Rollout, now: datetime) -> dict:
    rollout.status, rollout.phase, rollout.phase_started_at = RolloutStatus.RUNNING, 0, now
    rollout.save(update_fields=["status", "phase", "phase_started_at"])
    return _fill(rollout, now, record=True)


def validate_gates(gates: dict) -> dict:
    """The defaults with ``gates`` over them; unknown names and bad values raise ValidationError."""
    if not isinstance(gates, dict):
        raise ValidationError({"gates": "Gates must be an object."})
    unknown = sorted(set(gates) - set(GATE_KEYS))
    if unknown:
        raise ValidationError({"gates": f"Unknown gate {unknown[0]!r}; known: {', '.join(GATE_KEYS)}."})
    for key, value in gates.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValidationError({"gates": f"{key} must be a number ≥ 0."})
        if key in SHARE_GATES and value > 1:
            raise ValidationError({"gates": f"{key} is a share between 0 and 1."})
    return {**default_gates(), **gates}


# --- targets ----------------------------------------------------------------------------------


def validate_filter(data: dict) -> dict:
    """A saved filter's keys and value types; an unknown key raises ValidationError naming it."""
    if not isinstance(data, dict):
        raise ValidationError({"target_filter": "The filter must be an object."})
    unknown = sorted(set(data) - set(FILTER_KEYS))
    if unknown:
        raise ValidationError({"target_filter": f"Unknown filter key {unknown[0]!r}; known: {', '.join(FILTER_KEYS)}."})
    for key in ("group", "hardware", "location"):
        if key in data and not isinstance(data[key], str):
            raise ValidationError({"target_filter": f"{key} must be a string."})
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValidationError({"target_filter": "tags must be a list of tag names."})
    if "status" in data and data["status"] not in DeviceStatus.values:
        raise ValidationError({"target_filter": f"status must be one of {', '.join(DeviceStatus.values)}."})
    return data


def target_devices(rollout: Rollout) -> QuerySet[Device]:
    """The devices the rollout targets now (joiners included)."""
    devices = Device.objects.all()
    if rollout.target_kind == TargetKind.GROUPS:
        return devices.filter(group__in=rollout.target_groups.values("pk"))
    if rollout.target_kind == TargetKind.DEVICES:
        return devices.filter(pk__in=rollout.target_devices.values("pk"))
    if rollout.target_kind == TargetKind.FILTER:
        return _filtered(devices, rollout.target_filter or {})
    return devices


def _filtered(devices: QuerySet[Device], spec: dict) -> QuerySet[Device]:
    if "group" in spec:
        devices = devices.filter(group__name=spec["group"])
    for tag in spec.get("tags", []):
        # One join per tag: a device must carry all of them. (device, tag) is unique: no duplicates.
        devices = devices.filter(tags__name=tag)
    for key in ("hardware", "location", "status"):
        if key in spec:
            devices = devices.filter(**{key: spec[key]})
    return devices


def describe_target(rollout: Rollout) -> dict:
    if rollout.target_kind == TargetKind.GROUPS:
        return {"kind": rollout.target_kind, "groups": sorted(rollout.target_groups.values_list("name", flat=True))}
    if rollout.target_kind == TargetKind.DEVICES:
        return {
            "kind": rollout.target_kind,
            "devices": [str(pk) for pk in rollout.target_devices.values_list("pk", flat=True)],
        }
    if rollout.target_kind == TargetKind.FILTER:
        return {"kind": rollout.target_kind, "filter": rollout.target_filter}
    return {"kind": rollout.target_kind}


# --- preflight --------------------------------------------------------------------------------


def preflight(version: ModelVersion, runtime: dict | None) -> str:
    """Why a device reporting ``runtime`` cannot run ``version`` ("" when it can)."""
    runtime = runtime or {}
    if version.min_memory_mb:
        memory = runtime.get("memory_total_mb")
        if not isinstance(memory, int | float) or isinstance(memory, bool):
            return "does not report its memory"
        if memory < version.min_memory_mb:
            return f"has {memory:g} MB of memory, needs {version.min_memory_mb} MB"
    for name, minimum in sorted((version.runtime or {}).items()):
        reason = _runtime_shortfall(name, minimum, runtime.get(name))
        if reason:
            return reason
    return ""


def _runtime_shortfall(name: str, minimum: str, reported) -> str:
    if not reported:
        return f"does not report {name} version"
    parsed = _parse(reported)
    if parsed is None:
        return f"reports an unreadable {name} version {reported!r}"
    if parsed < _parse(minimum):
        return f"runs {name} {reported}, needs {minimum} or later"
    return ""


def _parse(text) -> Version | None:
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


# --- assigning (phases and joiners) -----------------------------------------------------------


def _order(rollout_pk: int, device_pk) -> bytes:
    return hashlib.sha256(f"{rollout_pk}:{device_pk}".encode()).digest()


def phase_size(share: float, eligible: int) -> int:
    # Rounded first: 0.1 × 30 is 3.0000000000000004 in floating point, which must stay 3.
    return math.ceil(round(share * eligible, 9))


def _fill(rollout: Rollout, now: datetime, *, record: bool) -> dict:
    """Assign the devices the current phase covers and exclude those preflight refuses, in bulk.
    Returns the counts; writes an exclude decision for new exclusions, and with ``record`` an
    assign decision for new assignments (an advance records them in its own decision)."""
    existing = dict(rollout.assignments.values_list("device_id", "state"))
    held = [pk for pk, state in existing.items() if state != AssignmentState.EXCLUDED]
    fresh = target_devices(rollout).exclude(
        pk__in=rollout.assignments.exclude(state=AssignmentState.EXCLUDED).values("device_id")
    )
    passing, refused = [], {}
    for pk, runtime in fresh.values_list("pk", "runtime"):
        reason = preflight(rollout.version, runtime)
        if reason:
            refused[pk] = reason
        else:
            passing.append(pk)
    eligible = sorted([*held, *passing], key=lambda pk: _order(rollout.pk, pk))
    chosen = eligible[: phase_size(rollout.phases[rollout.phase], len(eligible))]
    counts = {
        "assigned": _assign(rollout, [pk for pk in chosen if pk not in existing], now),
        "readmitted": _readmit(rollout, [pk for pk in chosen if existing.get(pk) == AssignmentState.EXCLUDED], now),
        "excluded": _exclude(rollout, {pk: r for pk, r in refused.items() if pk not in existing}, now),
        "eligible": len(eligible),
        "phase_size": len(chosen),
    }
    if record and (counts["assigned"] or counts["readmitted"]):
        _decide(rollout, "assign", reason="Devices joined the target.", evidence=counts)
    return counts


def _assign(rollout: Rollout, device_pks: list, now: datetime) -> int:
    rows = [
        RolloutAssignment(
            rollout=rollout, device_id=pk, version=rollout.version, phase=rollout.phase, assigned_at=now, updated=now
        )
        for pk in device_pks
    ]
    RolloutAssignment.objects.bulk_create(rows, batch_size=BULK_BATCH)
    return len(rows)


def _readmit(rollout: Rollout, device_pks: list, now: datetime) -> int:
    if not device_pks:
        return 0
    return rollout.assignments.filter(device_id__in=device_pks, state=AssignmentState.EXCLUDED).update(
        state=AssignmentState.ASSIGNED, reason="", phase=rollout.phase, assigned_at=now, updated=now
    )


def _exclude(rollout: Rollout, reasons: dict, now: datetime) -> int:
    if not reasons:
        return 0
    rows = [
        RolloutAssignment(
            rollout=rollout,
            device_id=pk,
            version=rollout.version,
            phase=rollout.phase,
            state=AssignmentState.EXCLUDED,
            reason=reason,
            assigned_at=now,
            updated=now,
        )
        for pk, reason in reasons.items()
    ]
    RolloutAssignment.objects.bulk_create(rows, batch_size=BULK_BATCH)
    by_reason: dict[str, int] = {}
    for reason in reasons.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    evidence = {
        "count": len(rows),
        "reasons": by_reason,
        "devices": [str(pk) for pk in list(reasons)[:EVIDENCE_DEVICES]],
    }
    _decide(rollout, "exclude", reason=f"Preflight excluded {len(rows)} device(s).", evidence=evidence)
    return len(rows)


# --- what devices are told (desired state, download) ------------------------------------------


@dataclass(frozen=True)
class ServedVersion:
    """What a device is told about a version: its ``model`` entry in the desired state."""

    id: int
    label: str
    sha256: str
    size: int

    def desired_model(self) -> dict:
        url = versions.BUNDLE_URL.format(id=self.id)
        return {"version": self.label, "sha256": self.sha256, "url": url, "size": self.size}


@dataclass
class SyncAssignment:
    """A device's current assignment as the sync path needs it (heartbeat, desired state,
    download), with its rollout's status and both versions, read in one statement."""

    id: int
    rollout_id: int
    rollout_status: str
    download_timeout_minutes: int
    state: str
    delivered: bool
    version: ServedVersion
    baseline: ServedVersion | None


def current_assignment(device) -> SyncAssignment | None:
    """The device's assignment in the newest rollout that reaches it (one indexed query).

    Written in SQL: every heartbeat asks, and building the same query through the ORM (five
    tables, a filter, an order) cost about 3 ms of server CPU, three times the query itself —
    the difference between meeting the heartbeat target and missing it."""
    params = [Device._meta.pk.get_db_prep_value(device.pk, connection), *SERVED_STATUSES, AssignmentState.EXCLUDED]
    with connection.cursor() as cursor:
        cursor.execute(_sync_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    baseline = ServedVersion(row[11], f"{row[12]}@{row[13]}", row[14], row[15]) if row[11] is not None else None
    return SyncAssignment(
        id=row[0],
        rollout_id=row[1],
        rollout_status=row[2],
        download_timeout_minutes=row[3],
        state=row[4],
        delivered=bool(row[5]),
        version=ServedVersion(row[6], f"{row[7]}@{row[8]}", row[9], row[10]),
        baseline=baseline,
    )


_SYNC_SQL: str | None = None


def _sync_sql() -> str:
    global _SYNC_SQL
    if _SYNC_SQL is None:
        q = connection.ops.quote_name
        tables = {
            name: q(model._meta.db_table)
            for name, model in (("a", RolloutAssignment), ("r", Rollout), ("v", ModelVersion), ("f", ModelFamily))
        }
        statuses = ", ".join(["%s"] * len(SERVED_STATUSES))
        # Only quoted table names and placeholders are formatted in; every value is a parameter.
        _SYNC_SQL = (
            "SELECT a.id, a.rollout_id, r.status, r.download_timeout_minutes, a.state,"  # noqa: S608
            " a.delivered_at IS NOT NULL,"
            " v.id, vf.name, v.number, v.bundle_sha256, v.bundle_size,"
            " b.id, bf.name, b.number, b.bundle_sha256, b.bundle_size"
            f" FROM {tables['a']} a"
            f" JOIN {tables['r']} r ON r.id = a.rollout_id"
            f" JOIN {tables['v']} v ON v.id = a.version_id"
            f" JOIN {tables['f']} vf ON vf.id = v.family_id"
            f" LEFT JOIN {tables['v']} b ON b.id = r.baseline_id"
            f" LEFT JOIN {tables['f']} bf ON bf.id = b.family_id"
            f" WHERE a.device_id = %s AND r.status IN ({statuses}) AND a.state <> %s"
            " ORDER BY a.rollout_id DESC LIMIT 1"
        )
    return _SYNC_SQL


def served_version(assignment: SyncAssignment) -> ServedVersion | None:
    """What the device should run: the assigned version, or the baseline once the rollout was
    recalled or the version failed on it."""
    if assignment.rollout_status in RECALLED_STATUSES:
        return assignment.baseline
    if assignment.state in (AssignmentState.FAILED, AssignmentState.ROLLED_BACK):
        return assignment.baseline
    return assignment.version


def desired_state(device) -> dict:
    """Desired-state provider (devices.hooks): the ``model`` the device should run."""
    assignment = device.__dict__.pop(_CACHE, _MISSING)
    if assignment is _MISSING:
        assignment = current_assignment(device)
    if assignment is None:
        return {}
    version = served_version(assignment)
    if version is not None and version.id == assignment.version.id and assignment.state in IN_PROGRESS_STATES:
        _mark_delivered(assignment)
    return {"model": version.desired_model() if version is not None else None}


def _mark_delivered(assignment: SyncAssignment) -> None:
    if assignment.delivered:
        return
    now = timezone.now()
    deadline = now + timedelta(minutes=assignment.download_timeout_minutes)
    # Conditional: only the first delivery starts the clock, however many syncs race.
    RolloutAssignment.objects.filter(pk=assignment.id, delivered_at__isnull=True).update(
        delivered_at=now, deadline_at=deadline, updated=now
    )
    assignment.delivered = True


def downloadable(device, version_id: int) -> ModelVersion | None:
    """The version a device may download: the one its desired state names (its assignment, or
    the baseline during a rollback). Marks an assigned assignment downloading."""
    assignment = current_assignment(device)
    served = served_version(assignment) if assignment else None
    if served is None or served.id != version_id:
        return None
    if served.id == assignment.version.id and assignment.state == AssignmentState.ASSIGNED:
        now = timezone.now()
        RolloutAssignment.objects.filter(pk=assignment.id, state=AssignmentState.ASSIGNED).update(
            state=AssignmentState.DOWNLOADING, updated=now
        )
    return ModelVersion.objects.select_related("family").get(pk=served.id)


# --- what devices report (heartbeat receiver) -------------------------------------------------


def on_heartbeat(device, heartbeat: dict) -> None:
    """Heartbeat receiver (devices.hooks): move the device's assignment on what it reports."""
    assignment = current_assignment(device)
    device.__dict__[_CACHE] = assignment
    if assignment is None:
        return
    change = _reported_change(assignment, heartbeat)
    if not change:
        return
    now = timezone.now()
    # Conditional on the state read: a tick that moved the row meanwhile wins.
    moved = RolloutAssignment.objects.filter(pk=assignment.id, state=assignment.state).update(**change, updated=now)
    if moved:
        assignment.state = change["state"]


def _reported_change(assignment: SyncAssignment, heartbeat: dict) -> dict | None:
    reported = heartbeat.get("model_version") or ""
    if assignment.rollout_status in RECALLED_STATUSES:
        baseline = assignment.baseline
        # Only a device that ran the version has something to confirm; failed ones stay failed.
        if baseline is not None and reported == baseline.label and assignment.state == AssignmentState.ACTIVE:
            return {"state": AssignmentState.ROLLED_BACK, "reason": f"rolled back to {baseline.label}"}
        return None
    if reported == assignment.version.label:
        if assignment.state == AssignmentState.ACTIVE:
            return None
        return {"state": AssignmentState.ACTIVE, "active_at": timezone.now(), "reason": ""}
    outcome = heartbeat.get("bundle") or {}
    if (
        assignment.state in (*IN_PROGRESS_STATES, AssignmentState.ACTIVE)
        and outcome.get("status") in FAILED_OUTCOMES
        and outcome.get("version") == assignment.version.label
    ):
        error = outcome.get("error") or "no error given"
        return {"state": AssignmentState.FAILED, "reason": f"device {outcome['status']} it: {error}"[:2000]}
    return None


# --- timeouts ---------------------------------------------------------------------------------


def fail_timed_out(now: datetime | None = None, *, rollout: Rollout | None = None) -> int:
    """Fail the assignments still in progress past their deadline; return how many."""
    now = now or timezone.now()
    due = RolloutAssignment.objects.filter(state__in=IN_PROGRESS_STATES, deadline_at__lte=now)
    if rollout is not None:
        due = due.filter(rollout=rollout)
    per_rollout = list(
        due.values_list("rollout_id", "rollout__download_timeout_minutes", "rollout__phase").distinct().order_by()
    )
    failed = 0
    for rollout_pk, minutes, phase in per_rollout:
        failed += _time_out(due.filter(rollout_id=rollout_pk), rollout_pk, minutes, phase, now)
    return failed


def _time_out(due: QuerySet, rollout_pk: int, minutes: int, phase: int, now: datetime) -> int:
    with transaction.atomic():
        rows = list(due.values_list("pk", "device_id"))
        count = RolloutAssignment.objects.filter(pk__in=[pk for pk, _ in rows], state__in=IN_PROGRESS_STATES).update(
            state=AssignmentState.FAILED, reason=f"timed out after {minutes} min", updated=now
        )
        if count:
            evidence = {
                "count": count,
                "timeout_minutes": minutes,
                "devices": [str(device) for _, device in rows[:EVIDENCE_DEVICES]],
            }
            RolloutDecision.objects.create(
                rollout_id=rollout_pk,
                action="timeout",
                phase=phase,
                at=now,
                reason=f"{count} assignment(s) timed out after {minutes} min.",
                evidence=evidence,
            )
    return count


# --- the tick ---------------------------------------------------------------------------------


def tick_all(now: datetime | None = None) -> dict:
    """Time out stuck assignments, then tick every running or paused rollout and every
    completed one still taking joiners. Returns ``{"timed_out": n, "rollouts": {id: action}}``."""
    now = now or timezone.now()
    timed_out = fail_timed_out(now)
    newer = Rollout.objects.filter(family=OuterRef("family"), pk__gt=OuterRef("pk"), status__in=SUPERSEDING_STATUSES)
    due = Rollout.objects.filter(
        Q(status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED])
        | (Q(status=RolloutStatus.COMPLETED) & ~Exists(newer))
    )
    actions = {str(rollout.pk): tick(rollout, now) for rollout in due.order_by("pk")}
    return {"timed_out": timed_out, "rollouts": actions}


def tick(rollout: Rollout, now: datetime | None = None) -> str:
    """Evaluate timeouts, joiners and gates of one rollout; return the action taken."""
    now = now or timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        timed_out = fail_timed_out(now, rollout=current)
        if current.status == RolloutStatus.RUNNING:
            action = _tick_running(current, now)
        elif current.status == RolloutStatus.COMPLETED:
            action = _tick_completed(current, now)
        else:
            action = "idle"  # paused, awaiting approval or ended: only timeouts
    _copy(current, rollout)
    if timed_out or action in CHANGING_ACTIONS:
        _publish(rollout, action)
    return action


def _tick_running(rollout: Rollout, now: datetime) -> str:
    counts = _fill(rollout, now, record=True)
    action = _apply_gates(rollout, now)
    joined = counts["assigned"] or counts["readmitted"]
    return "assigned" if joined and action in ("waiting", "held") else action


def _apply_gates(rollout: Rollout, now: datetime) -> str:
    result = evaluate_gates(rollout, now)
    if result.outcome == "fail":
        return _on_gate_failure(rollout, result, now)
    if result.outcome == "pass" and rollout.phase == len(rollout.phases) - 1:
        _complete(rollout, now, evidence=result.evidence)
        return "completed"
    if result.outcome == "pass" and rollout.auto_advance:
        _advance(rollout, now, evidence=result.evidence)
        return "advanced"
    if result.outcome == "pass":
        _hold(rollout, "The gates pass; waiting for an operator to advance.", result.evidence, now)
        return "held"
    if result.outcome == "hold":
        _hold(rollout, result.reason, result.evidence, now)
        return "held"
    return "waiting"


def _tick_completed(rollout: Rollout, now: datetime) -> str:
    newer = Rollout.objects.filter(family=rollout.family, pk__gt=rollout.pk, status__in=SUPERSEDING_STATUSES)
    if newer.exists():
        return "superseded"
    counts = _fill(rollout, now, record=True)
    return "assigned" if counts["assigned"] or counts["readmitted"] else "idle"


def _on_gate_failure(rollout: Rollout, result: GateResult, now: datetime) -> str:
    if rollout.auto_rollback:
        _decide(rollout, "halt", reason=result.reason, evidence=result.evidence, at=now)
        _recall(rollout, RolloutStatus.HALTED, "rollback", f"Gate failed: {result.reason}", now)
        return "halted"
    rollout.status, rollout.reason = RolloutStatus.PAUSED, f"Gate failed: {result.reason} (auto-rollback is off)"
    rollout.save(update_fields=["status", "reason"])
    _decide(rollout, "pause", reason=rollout.reason, evidence=result.evidence, at=now)
    return "paused"


def _advance(
    rollout: Rollout, now: datetime, *, evidence: dict, by=None, manual: bool = False, forced: bool = False
) -> None:
    rollout.phase += 1
    rollout.phase_started_at = now
    rollout.save(update_fields=["phase", "phase_started_at"])
    counts = _fill(rollout, now, record=False)
    share = rollout.phases[rollout.phase]
    number = f"Phase {rollout.phase + 1} of {len(rollout.phases)}"  # people count phases from 1
    reason = f"{number} ({share:.0%} of the target)" + (", forced by an operator." if forced else ".")
    evidence = {"gates": evidence, "assignments": counts}
    _decide(rollout, "advance", by=by, manual=manual, reason=reason, evidence=evidence, at=now)


def _complete(rollout: Rollout, now: datetime, *, evidence: dict, by=None, manual: bool = False) -> None:
    rollout.status, rollout.finished_at, rollout.reason = (
        RolloutStatus.COMPLETED,
        now,
        "Rolled out to the whole target.",
    )
    rollout.save(update_fields=["status", "finished_at", "reason"])
    _decide(rollout, "complete", by=by, manual=manual, reason=rollout.reason, evidence=evidence, at=now)
    # What the whole fleet runs is what the next rollout falls back to and candidates must beat.
    if rollout.version.status != VersionStatus.ARCHIVED:
        versions.move_alias(rollout.family, CHAMPION, rollout.version, by=by, reason=f"{rollout} completed")


def _hold(rollout: Rollout, reason: str, evidence: dict, now: datetime) -> None:
    # Recorded once per change of reason: a tick every 30 s must not write a row each time.
    last = rollout.decisions.order_by("-at", "-id").values_list("action", "phase", "reason").first()
    if last != ("hold", rollout.phase, reason):
        _decide(rollout, "hold", reason=reason, evidence=evidence, at=now)


def _recall(
    rollout: Rollout, status: str, action: str, reason: str, now: datetime, *, by=None, manual: bool = False
) -> dict:
    """Fleet rollback: every device of the rollout is told to run the baseline again."""
    was_completed = rollout.status == RolloutStatus.COMPLETED
    rollout.status, rollout.finished_at, rollout.reason = status, now, reason
    rollout.save(update_fields=["status", "finished_at", "reason"])
    counts = _point_back(rollout, now)
    target = rollout.baseline.label if rollout.baseline else None
    _decide(rollout, action, by=by, manual=manual, reason=reason, evidence={"baseline": target, **counts}, at=now)
    if was_completed and rollout.baseline is not None:
        champion = versions.alias_version(rollout.family, CHAMPION)
        if champion is not None and champion.pk == rollout.version_id:
            versions.move_alias(rollout.family, CHAMPION, rollout.baseline, by=by, reason=f"{rollout} rolled back")
    return counts


def _point_back(rollout: Rollout, now: datetime) -> dict:
    rows = rollout.assignments
    # Never installed: nothing to undo on the device, so nothing to wait for.
    recalled = rows.filter(state__in=IN_PROGRESS_STATES).update(
        state=AssignmentState.ROLLED_BACK, reason="recalled before it was installed", updated=now
    )
    if rollout.baseline is None:
        active = rows.filter(state=AssignmentState.ACTIVE).update(
            state=AssignmentState.ROLLED_BACK,
            reason="no baseline to go back to: the device keeps its bundle",
            updated=now,
        )
        return {"recalled": recalled, "rolling_back": 0, "rolled_back": active}
    # Active devices stay active until they report the baseline (the heartbeat confirms it).
    active = rows.filter(state=AssignmentState.ACTIVE).update(
        reason=f"rolling back to {rollout.baseline.label}", updated=now
    )
    return {"recalled": recalled, "rolling_back": active, "rolled_back": 0}


# --- gates ------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """``outcome``: wait (still observing), hold (not enough evidence), pass or fail."""

    outcome: str
    reason: str = ""
    evidence: dict = field(default_factory=dict)


def evaluate_gates(rollout: Rollout, now: datetime | None = None) -> GateResult:
    """Judge the current phase (read-only)."""
    now = now or timezone.now()
    gates = {**default_gates(), **(rollout.gates or {})}
    started = rollout.phase_started_at or now
    observed = (now - started).total_seconds() / 60
    evidence = {"phase": rollout.phase, "observed_minutes": round(observed, 2)}
    if observed < gates["min_observation_minutes"]:
        return GateResult("wait", "Observing the phase.", evidence)
    install = install_counts(rollout)
    evidence["install"] = install
    result = _judge_install(install, gates, evidence)
    if result is not None or rollout.phase == len(rollout.phases) - 1:
        return result or GateResult("pass", "The install gates pass.", evidence)
    health = health_evidence(rollout, started, now)
    evidence["health"] = health
    return _judge_health(health, gates, evidence)


def install_counts(rollout: Rollout) -> dict:
    """Assignment states over the whole rollout and the current phase (one GROUP BY)."""
    rows = (
        rollout.assignments.exclude(state=AssignmentState.EXCLUDED)
        .values("phase", "state")
        .annotate(n=Count("pk"), delivered=Count("delivered_at"))
        .order_by()
    )
    total, phase = _tally(), _tally()
    for row in rows:
        for tally in (total, phase) if row["phase"] == rollout.phase else (total,):
            tally[row["state"]] += row["n"]
            tally["delivered"] += row["delivered"]
            tally["rows"] += row["n"]
    resolved = total["active"] + total["failed"]
    # Each phase waits for its own devices to report; a phase that added none is judged on all.
    cohort = phase if phase["rows"] else total
    reported = cohort["active"] + cohort["failed"]
    delivered = max(cohort["delivered"], reported)
    return {
        **{state: total[state] for state in ("assigned", "downloading", "active", "failed", "rolled_back")},
        "delivered": max(total["delivered"], resolved),
        "phase_reported": reported,
        "phase_delivered": delivered,
        "reporting_share": _round(reported / delivered) if delivered else 0.0,
        "install_success": _round(total["active"] / resolved) if resolved else None,
    }


def _tally() -> dict:
    return dict.fromkeys([*AssignmentState.values, "delivered", "rows"], 0)


def _judge_install(install: dict, gates: dict, evidence: dict) -> GateResult | None:
    evidence["thresholds"] = {key: gates[key] for key in ("max_failed", "min_reporting_share", "min_install_success")}
    if install["failed"] > gates["max_failed"]:
        return GateResult(
            "fail", f"{install['failed']} devices failed to install (at most {gates['max_failed']}).", evidence
        )
    if install["reporting_share"] < gates["min_reporting_share"] or install["install_success"] is None:
        return GateResult("hold", "Waiting for the devices of this phase to report.", evidence)
    if install["install_success"] < gates["min_install_success"]:
        reason = f"Install success {install['install_success']:.0%} is below {gates['min_install_success']:.0%}."
        return GateResult("fail", reason, evidence)
    return None


def health_evidence(rollout: Rollout, since: datetime, now: datetime) -> dict:
    """Canary (active on the new version) against control (target devices still on the
    baseline) since ``since``: predictions and drift events in two conditional aggregates."""
    label = rollout.version.label
    canary = rollout.assignments.filter(state=AssignmentState.ACTIVE)
    control = target_devices(rollout).exclude(
        pk__in=rollout.assignments.exclude(state__in=IN_PROGRESS_STATES).values("device_id")
    )
    canary_q = Q(device_id__in=canary.values("device_id"), model_version=label)
    control_q = Q(device_id__in=control.values("pk"))
    control_q &= Q(model_version=rollout.baseline.label) if rollout.baseline else ~Q(model_version=label)
    predictions = PredictionLog.objects.filter(created__gte=since, created__lte=now).aggregate(
        canary_n=Count("pk", filter=canary_q),
        canary_confidence=Avg("confidence", filter=canary_q),
        canary_latency=Avg("latency_ms", filter=canary_q),
        control_n=Count("pk", filter=control_q),
        control_confidence=Avg("confidence", filter=control_q),
        control_latency=Avg("latency_ms", filter=control_q),
    )
    drift = DriftEvent.objects.filter(created__gte=since, created__lte=now).aggregate(
        canary=Count("pk", filter=canary_q), control=Count("pk", filter=control_q)
    )
    canary_hours = sum(
        (now - max(at or since, since)).total_seconds() for at in canary.values_list("active_at", flat=True)
    )
    control_hours = control.count() * (now - since).total_seconds()
    return _health_numbers(predictions, drift, canary_hours / 3600, control_hours / 3600)


def _health_numbers(predictions: dict, drift: dict, canary_hours: float, control_hours: float) -> dict:
    return {
        side: {
            "predictions": predictions[f"{side}_n"],
            "mean_confidence": _round(predictions[f"{side}_confidence"]),
            "mean_latency_ms": _round(predictions[f"{side}_latency"]),
            "drift_events": drift[side],
            "device_hours": _round(hours),
            "drift_rate": _round(drift[side] / hours) if hours > 0 else 0.0,
        }
        for side, hours in (("canary", canary_hours), ("control", control_hours))
    }


def _judge_health(health: dict, gates: dict, evidence: dict) -> GateResult:
    canary, control = health["canary"], health["control"]
    health_keys = ("max_drift_rate_ratio", "max_confidence_drop", "max_latency_ratio", "min_predictions")
    evidence["thresholds"].update({key: gates[key] for key in health_keys})
    evidence["thresholds"]["drift_events_floor"] = gates.get("drift_events_floor", DRIFT_EVENTS_FLOOR)
    if min(canary["predictions"], control["predictions"]) < gates["min_predictions"]:
        return GateResult("hold", "Insufficient evidence: too few predictions on one side.", evidence)
    failures = _health_failures(canary, control, gates)
    evidence["failed"] = [name for name, _ in failures]
    if failures:
        return GateResult("fail", " ".join(message for _, message in failures), evidence)
    return GateResult("pass", "The install and health gates pass.", evidence)


def _health_failures(canary: dict, control: dict, gates: dict) -> list[tuple[str, str]]:
    failures = []
    # The control's rate over the canary's exposure, times the ratio, plus the floor.
    expected = control["drift_rate"] * canary["device_hours"]
    allowed = expected * gates["max_drift_rate_ratio"] + gates.get("drift_events_floor", DRIFT_EVENTS_FLOOR)
    if canary["drift_events"] > allowed:
        message = (
            f"{canary['drift_events']} drift events on the canary ({canary['drift_rate']:.3g}/device-hour), "
            f"over the {allowed:.3g} its control's rate ({control['drift_rate']:.3g}/device-hour) allows."
        )
        failures.append(("drift_rate", message))
    lowest = control["mean_confidence"] - gates["max_confidence_drop"]
    if canary["mean_confidence"] < lowest:
        failures.append(
            ("confidence", f"Mean confidence {canary['mean_confidence']:.3f} under {lowest:.3f} (control − drop).")
        )
    if canary["mean_latency_ms"] is not None and control["mean_latency_ms"] is not None:
        highest = control["mean_latency_ms"] * gates["max_latency_ratio"]
        if canary["mean_latency_ms"] > highest:
            failures.append(("latency", f"Mean latency {canary['mean_latency_ms']:.1f} ms over {highest:.1f} ms."))
    return failures


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# --- operators' actions -----------------------------------------------------------------------


def approve(rollout: Rollout, *, by) -> Rollout:
    """Start the first phase of a rollout that awaits approval."""
    now = timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, (RolloutStatus.AWAITING_APPROVAL,), "approve")
        _decide(current, "approve", by=by, manual=True, reason="Approved.", at=now)
        _begin(current, now)
    return _after(current, rollout, "approve")


def pause(rollout: Rollout, *, by=None, reason: str = "") -> Rollout:
    """Stop advancing and assigning; devices keep what they were told."""
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, (RolloutStatus.RUNNING,), "pause")
        current.status, current.reason = RolloutStatus.PAUSED, reason or "Paused by an operator."
        current.save(update_fields=["status", "reason"])
        _decide(current, "pause", by=by, manual=True, reason=current.reason)
    return _after(current, rollout, "pause")


def resume(rollout: Rollout, *, by=None) -> Rollout:
    now = timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, (RolloutStatus.PAUSED,), "resume")
        current.status, current.reason = RolloutStatus.RUNNING, ""
        current.save(update_fields=["status", "reason"])
        _decide(current, "resume", by=by, manual=True, reason="Resumed.", at=now)
        _fill(current, now, record=True)
    return _after(current, rollout, "resume")


def advance(rollout: Rollout, *, by=None, force: bool = False) -> Rollout:
    """Go to the next phase (or complete from the last) now. The gates must pass unless ``force``."""
    now = timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, (RolloutStatus.RUNNING,), "advance")
        result = evaluate_gates(current, now)
        if result.outcome != "pass" and not force:
            raise RolloutError(f"The gates do not pass ({result.reason}); advance with force to override.")
        evidence = {**result.evidence, "outcome": result.outcome, "forced": force}
        if current.phase == len(current.phases) - 1:
            _complete(current, now, evidence=evidence, by=by, manual=True)
        else:
            _advance(current, now, evidence=evidence, by=by, manual=True, forced=force)
    return _after(current, rollout, "advance")


def rollback(rollout: Rollout, *, by=None, reason: str = "") -> Rollout:
    """Manual fleet rollback: every device of the rollout goes back to the baseline."""
    now = timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.COMPLETED), "roll back")
        _refuse_if_superseded(current)
        reason = reason or "Rolled back by an operator."
        _recall(current, RolloutStatus.HALTED, "rollback", reason, now, by=by, manual=True)
    return _after(current, rollout, "rollback")


def cancel(rollout: Rollout, *, by=None, reason: str = "") -> Rollout:
    """End a rollout that has not completed; devices that got the version go back to the
    baseline as in a rollback, without the halt alert."""
    now = timezone.now()
    with transaction.atomic():
        current = _locked(rollout)
        _require(current, LIVE_ROLLOUT_STATUSES, "cancel")
        reason = reason or "Cancelled by an operator."
        _recall(current, RolloutStatus.CANCELLED, "cancel", reason, now, by=by, manual=True)
    return _after(current, rollout, "cancel")


def _require(rollout: Rollout, statuses, verb: str) -> None:
    if rollout.status not in statuses:
        allowed = ", ".join(RolloutStatus(status).label.lower() for status in statuses)
        raise RolloutError(f"Cannot {verb} {rollout}: it is {rollout.get_status_display().lower()} (needs: {allowed}).")


def _refuse_if_superseded(rollout: Rollout) -> None:
    newer = Rollout.objects.filter(family=rollout.family, pk__gt=rollout.pk, status__in=SUPERSEDING_STATUSES).first()
    if newer is not None:
        raise RolloutError(f"{newer} replaced {rollout}: roll that one back instead.")


def _after(current: Rollout, rollout: Rollout, action: str) -> Rollout:
    _copy(current, rollout)
    _publish(rollout, action)
    return rollout


# --- records and events -----------------------------------------------------------------------


def _decide(
    rollout: Rollout, action: str, *, by=None, manual: bool = False, reason: str = "", evidence=None, at=None
) -> RolloutDecision:
    return RolloutDecision.objects.create(
        rollout=rollout,
        action=action,
        phase=rollout.phase,
        automatic=not (manual or by is not None),
        by=by,
        at=at or timezone.now(),
        reason=reason,
        evidence=evidence or {},
    )


def _locked(rollout: Rollout) -> Rollout:
    # One actor at a time per rollout: the beat's tick and an operator's click serialize here.
    return (
        Rollout.objects.select_for_update(of=("self",))
        .select_related("family", "version__family", "baseline__family")
        .get(pk=rollout.pk)
    )


def _copy(source: Rollout, target: Rollout) -> None:
    if source is not target:
        for model_field in Rollout._meta.concrete_fields:
            setattr(target, model_field.attname, getattr(source, model_field.attname))


def _publish(rollout: Rollout, action: str) -> None:
    pk = rollout.pk
    live.publish(
        ROLLOUT_TOPIC,
        "rollout.updated",
        lambda: {
            **rollout_summary(Rollout.objects.select_related("version__family", "baseline__family").get(pk=pk)),
            "action": action,
        },
    )


def rollout_summary(rollout: Rollout) -> dict:
    """Counts per state (per phase and in all), gates and the last decision, for pages and APIs."""
    rows = rollout.assignments.values("phase", "state").annotate(n=Count("pk")).order_by("phase")
    phases = [{"share": share, "counts": {}} for share in rollout.phases]
    totals = dict.fromkeys(AssignmentState.values, 0)
    for row in rows:
        if row["phase"] < len(phases):
            phases[row["phase"]]["counts"][row["state"]] = row["n"]
        totals[row["state"]] += row["n"]
    last = rollout.decisions.order_by("-at", "-id").first()
    return {
        "id": rollout.pk,
        "name": str(rollout),
        "family": rollout.version.family.name,
        "version": rollout.version.label,
        "baseline": rollout.baseline.label if rollout.baseline_id else None,
        "status": rollout.status,
        "phase": rollout.phase,
        "phases": phases,
        "phase_started_at": rollout.phase_started_at,
        "totals": totals,
        "rolling_back": totals["active"] if rollout.status in RECALLED_STATUSES else 0,
        "gates": {**default_gates(), **(rollout.gates or {})},
        "reason": rollout.reason,
        "last_decision": _decision_summary(last),
    }


def _decision_summary(decision: RolloutDecision | None) -> dict | None:
    if decision is None:
        return None
    return {
        "action": decision.action,
        "phase": decision.phase,
        "automatic": decision.automatic,
        "at": decision.at,
        "reason": decision.reason,
        "evidence": decision.evidence,
    }
