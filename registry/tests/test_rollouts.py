"""Rollouts: phases, health and install gates, fleet rollback, timeouts, preflight, targets,
operators' actions, and the tick's cost over a large fleet."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from devices import services
from devices.models import Device, DeviceGroup, PredictionLog
from drift.alerts import registry as alert_registry
from drift.models import DriftEvent
from edge_client.knn import KNN
from labeling.tests.factories import DIGITS
from registry import alerts, rollouts, schedules, tasks, versions
from registry.bundles import build_bundle
from registry.models import (
    CHAMPION,
    AssignmentState,
    ModelVersion,
    Rollout,
    RolloutStatus,
    VersionStatus,
)
from registry.rollouts import (
    RolloutError,
    advance,
    approve,
    cancel,
    fail_timed_out,
    pause,
    resume,
    rollback,
    start_rollout,
    tick,
    tick_all,
)
from registry.tests.factories import digits_family

pytestmark = pytest.mark.django_db

# --- a simulated fleet ---------------------------------------------------------------------------

RUNTIME = {"memory_total_mb": 1024, "python": "3.11.9", "numpy": "2.1.0", "litert": "2.3.0", "client": "0.1.0"}
# Gates small enough for a fleet of a few dozen devices.
GATES = {"min_observation_minutes": 10, "min_predictions": 20, "min_reporting_share": 0.5}
OLD, NEW = "digits@1", "digits@2"


def version(**fields) -> ModelVersion:
    """A registered digits version with a small real bundle in the artifacts storage."""
    family = digits_family()
    number = versions.next_number(family)
    knn = KNN(k=1, max_size=10).fit(np.eye(4) + number, np.arange(4))
    built = build_bundle(label=f"digits@{number}", classes=DIGITS, transform=None, knn=knn, feature_dim=4)
    return versions.register_version(family, built, feature_dim=4, number=number, **fields)


def champion() -> ModelVersion:
    found = version()
    versions.move_alias(found.family, CHAMPION, found, reason="test baseline")
    return found


def fleet(n: int, *, prefix: str = "dev", group=None, runtime: dict | None = None, running: str = OLD) -> list:
    Device.objects.bulk_create(
        Device(
            name=f"{prefix}-{i:04d}",
            group=group,
            runtime=dict(RUNTIME if runtime is None else runtime),
            model_version=running,
        )
        for i in range(n)
    )
    return list(Device.objects.filter(name__startswith=f"{prefix}-").order_by("name"))


def beat(device: Device, running: str | None = None, **extra) -> dict:
    """One heartbeat, stored as the heartbeat view stores it; returns the desired state."""
    running = device.model_version if running is None else running
    return services.record_heartbeat(device, {"id": uuid.uuid4(), "model_version": running, **extra})


def install(devices) -> int:
    """Each device syncs and switches to the model its desired state names, then reports it."""
    switched = 0
    for device in devices:
        model = beat(device)["model"]
        if model and model["version"] != device.model_version:
            beat(device, model["version"])
            switched += 1
    return switched


def assignment(rollout: Rollout, device: Device):
    return rollout.assignments.get(device=device)


def assigned_devices(rollout: Rollout) -> set:
    return set(rollout.assignments.exclude(state=AssignmentState.EXCLUDED).values_list("device_id", flat=True))


def canary(rollout: Rollout) -> list:
    return list(
        Device.objects.filter(pk__in=rollout.assignments.filter(state=AssignmentState.ACTIVE).values("device_id"))
    )


def control(rollout: Rollout) -> list:
    return list(rollouts.target_devices(rollout).exclude(pk__in=rollout.assignments.values("device_id")))


def predict(devices, label: str, *, each: int, confidence: float, latency: float, at) -> None:
    PredictionLog.objects.bulk_create(
        PredictionLog(
            device=device,
            client_id=uuid.uuid4(),
            created=at,
            model_version=label,
            label="7",
            confidence=confidence,
            latency_ms=latency,
        )
        for device in devices
        for _ in range(each)
    )


def drift_events(devices, label: str, *, each: int, at) -> None:
    DriftEvent.objects.bulk_create(
        DriftEvent(device=device, client_id=uuid.uuid4(), created=at, detector="knn_distance", model_version=label)
        for device in devices
        for _ in range(each)
    )


def observe_phase(rollout: Rollout, *, canary_confidence=0.9, canary_latency=10.0, canary_drift=0, control_drift=0):
    """The current phase's evidence, one minute into it; returns when the gates may judge it."""
    at = rollout.phase_started_at + timedelta(minutes=1)
    on_new, on_old = canary(rollout), control(rollout)
    predict(
        on_new,
        rollout.version.label,
        each=40 // len(on_new) + 1,
        confidence=canary_confidence,
        latency=canary_latency,
        at=at,
    )
    if on_old:
        predict(on_old, OLD, each=40 // len(on_old) + 1, confidence=0.9, latency=10.0, at=at)
    drift_events(on_new[:1], rollout.version.label, each=canary_drift, at=at)
    drift_events(on_old[:1], OLD, each=control_drift, at=at)
    return rollout.phase_started_at + timedelta(minutes=11)


def backdate(rollout: Rollout, minutes: int = 15) -> None:
    """Move the phase's start into the past, for actions that judge it at the real time."""
    rollout.phase_started_at = timezone.now() - timedelta(minutes=minutes)
    Rollout.objects.filter(pk=rollout.pk).update(phase_started_at=rollout.phase_started_at)


def actions(rollout: Rollout) -> list[str]:
    return list(rollout.decisions.order_by("at", "id").values_list("action", flat=True))


def last_decision(rollout: Rollout, action: str):
    return rollout.decisions.filter(action=action).order_by("-at", "-id").first()


@pytest.fixture
def v1():
    return champion()


@pytest.fixture
def v2(v1):
    return version()


def canary_rollout(v2, n=20, **options) -> tuple[Rollout, list]:
    devices = fleet(n)
    options.setdefault("phases", [0.1, 0.5, 1.0])
    options.setdefault("gates", GATES)
    rollout = start_rollout(v2, **options)
    install(devices)
    return rollout, devices


# --- phases --------------------------------------------------------------------------------------


class TestPhases:
    def test_a_canary_advances_through_every_phase_and_completes(self, v1, v2):
        rollout, devices = canary_rollout(v2)
        assert len(assigned_devices(rollout)) == 2
        assert len(canary(rollout)) == 2
        for size in (10, 20):
            assert tick(rollout, observe_phase(rollout)) == "advanced"
            assert len(assigned_devices(rollout)) == size
            install(devices)
            assert len(canary(rollout)) == size
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "completed"
        rollout.refresh_from_db()
        assert rollout.status == RolloutStatus.COMPLETED
        assert actions(rollout) == ["start", "assign", "advance", "advance", "complete"]
        evidence = last_decision(rollout, "advance").evidence["gates"]
        assert evidence["health"]["canary"]["predictions"] >= GATES["min_predictions"]
        assert evidence["health"]["canary"]["mean_confidence"] == pytest.approx(0.9)
        assert evidence["install"]["install_success"] == 1.0
        # The whole fleet runs it: the next rollout falls back to it.
        assert versions.alias_version(v2.family, CHAMPION) == v2

    def test_devices_are_ordered_the_same_way_on_every_tick(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        first = assigned_devices(rollout)
        tick(rollout, rollout.phase_started_at + timedelta(minutes=1))
        assert assigned_devices(rollout) == first
        expected = sorted(Device.objects.values_list("pk", flat=True), key=lambda pk: rollouts._order(rollout.pk, pk))
        assert first == set(expected[:2])

    def test_a_phase_is_observed_before_it_is_judged(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        observe_phase(rollout)
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=5)) == "waiting"
        assert rollout.phase == 0

    def test_too_little_evidence_holds_the_phase_and_says_so_once(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        start = rollout.phase_started_at
        assert tick(rollout, start + timedelta(minutes=11)) == "held"
        assert tick(rollout, start + timedelta(minutes=12)) == "held"
        holds = rollout.decisions.filter(action="hold")
        assert holds.count() == 1
        assert "Insufficient evidence" in holds.get().reason
        assert holds.get().evidence["health"]["canary"]["predictions"] == 0
        assert rollout.phase == 0

    def test_without_auto_advance_passing_gates_wait_for_an_operator(self, v1, v2, operator):
        rollout, _ = canary_rollout(v2, auto_advance=False)
        backdate(rollout)
        assert tick(rollout, observe_phase(rollout)) == "held"
        assert "waiting for an operator" in last_decision(rollout, "hold").reason
        advance(rollout, by=operator)
        assert rollout.phase == 1
        decision = last_decision(rollout, "advance")
        assert (decision.automatic, decision.by) == (False, operator)

    def test_a_manual_advance_still_needs_the_gates_unless_forced(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        with pytest.raises(RolloutError, match="gates do not pass"):
            advance(rollout)
        assert Rollout.objects.get(pk=rollout.pk).phase == 0
        advance(rollout, force=True)
        assert rollout.phase == 1
        assert last_decision(rollout, "advance").evidence["gates"]["forced"] is True

    def test_an_immediate_rollout_assigns_everyone_and_completes_on_the_install_gates(self, v1, v2):
        rollout, devices = canary_rollout(v2, n=6, phases=[1.0])
        assert len(canary(rollout)) == 6
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "completed"

    def test_a_device_that_missed_a_phase_catches_up_on_its_next_sync(self, v1, v2):
        devices = fleet(10)
        rollout = start_rollout(v2, phases=[0.1, 0.5, 1.0], gates=GATES)
        (offline,) = Device.objects.filter(pk__in=assigned_devices(rollout))
        advance(rollout, force=True)
        advance(rollout, force=True)
        # Never delivered, so never timed out however long it stayed away.
        assert fail_timed_out(timezone.now() + timedelta(days=3)) == 0
        assert beat(offline)["model"]["version"] == NEW
        assert assignment(rollout, offline).phase == 0
        assert all(beat(device)["model"]["version"] == NEW for device in devices)


# --- health gates ---------------------------------------------------------------------------------


class TestHealthGates:
    @pytest.mark.parametrize(
        ("evidence", "failed"),
        [
            ({"canary_confidence": 0.5}, "confidence"),
            ({"canary_drift": 12}, "drift_rate"),
            ({"canary_latency": 40.0}, "latency"),
        ],
    )
    def test_a_failing_health_gate_halts_and_rolls_the_fleet_back(self, v1, v2, evidence, failed):
        rollout, devices = canary_rollout(v2)
        on_new = canary(rollout)
        assert tick(rollout, observe_phase(rollout, **evidence)) == "halted"
        rollout.refresh_from_db()
        assert rollout.status == RolloutStatus.HALTED
        assert actions(rollout)[-2:] == ["halt", "rollback"]
        halt = last_decision(rollout, "halt")
        assert halt.evidence["failed"] == [failed]
        assert halt.evidence["health"]["control"]["mean_confidence"] == pytest.approx(0.9)
        assert last_decision(rollout, "rollback").evidence["rolling_back"] == 2
        for device in on_new:
            row = assignment(rollout, device)
            assert (row.state, row.reason) == (AssignmentState.ACTIVE, f"rolling back to {OLD}")
            model = beat(device)["model"]
            assert model["version"] == OLD
            assert model["url"] == f"/api/v1/device/bundles/{v1.pk}"
            beat(device, OLD)
            assert assignment(rollout, device).state == AssignmentState.ROLLED_BACK
        assert all(beat(device)["model"] is None for device in control(rollout))

    def test_the_confidence_gate_records_the_numbers_it_compared(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        tick(rollout, observe_phase(rollout, canary_confidence=0.5))
        evidence = last_decision(rollout, "halt").evidence
        assert evidence["health"]["canary"]["mean_confidence"] == pytest.approx(0.5)
        assert evidence["thresholds"]["max_confidence_drop"] == 0.05
        assert "Mean confidence 0.500" in rollout.reason

    def test_a_few_canary_drift_events_over_a_quiet_control_are_tolerated(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        assert tick(rollout, observe_phase(rollout, canary_drift=2)) == "advanced"

    def test_canary_drift_in_line_with_the_controls_rate_passes(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        # 2 canary devices against 18 control ones: 6 events are a lower rate than 40 on the control.
        assert tick(rollout, observe_phase(rollout, canary_drift=6, control_drift=40)) == "advanced"

    def test_a_halt_raises_the_rollout_halted_alert(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        tick(rollout, observe_phase(rollout, canary_confidence=0.5))
        findings = alerts.halted_findings(None, alerts.validate_halted({}), timezone.now())
        assert [finding.subject for finding in findings] == [f"rollout:{rollout.pk}"]
        assert findings[0].details["baseline"] == OLD
        assert alerts.halted_findings(None, {"window_hours": 1}, timezone.now() + timedelta(hours=2)) == []
        assert alert_registry.is_registered("rollout_halted")

    def test_without_auto_rollback_a_failing_gate_pauses_and_rolls_nothing_back(self, v1, v2):
        rollout, _ = canary_rollout(v2, auto_rollback=False)
        assert tick(rollout, observe_phase(rollout, canary_confidence=0.5)) == "paused"
        assert rollout.status == RolloutStatus.PAUSED
        assert last_decision(rollout, "pause").evidence["failed"] == ["confidence"]
        assert all(beat(device)["model"]["version"] == NEW for device in canary(rollout))

    def test_a_halted_rollout_is_not_ticked_again(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        tick(rollout, observe_phase(rollout, canary_confidence=0.5))
        assert tick_all()["rollouts"] == {}
        assert tick(rollout) == "idle"


# --- install gates -------------------------------------------------------------------------------


class TestInstallGates:
    def refuse(self, device):
        outcome = {"status": "refused", "version": NEW, "error": "sha256 mismatch"}
        return beat(device, OLD, bundle=outcome)

    def test_devices_refusing_the_bundle_fail_the_install_gate_and_halt(self, v1, v2):
        fleet(10)
        rollout = start_rollout(v2, phases=[0.5, 1.0], gates=GATES)
        cohort = list(Device.objects.filter(pk__in=assigned_devices(rollout)).order_by("name"))
        for device in cohort[:3]:
            beat(device)
            # A device that refused the version is sent back to what it ran.
            assert self.refuse(device)["model"]["version"] == OLD
            row = assignment(rollout, device)
            assert row.state == AssignmentState.FAILED
            assert "sha256 mismatch" in row.reason
        install(cohort[3:])
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "halted"
        evidence = last_decision(rollout, "halt").evidence
        assert evidence["install"]["install_success"] == pytest.approx(0.4)
        assert (evidence["install"]["failed"], evidence["install"]["active"]) == (3, 2)

    def test_more_failures_than_allowed_halt_whatever_the_rate(self, v1, v2):
        devices = fleet(40)
        rollout = start_rollout(v2, phases=[0.5, 1.0], gates={**GATES, "max_failed": 1, "min_install_success": 0})
        cohort = list(Device.objects.filter(pk__in=assigned_devices(rollout)))
        for device in cohort[:2]:
            beat(device)
            self.refuse(device)
        install(cohort[2:])
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "halted"
        assert "2 devices failed to install" in rollout.reason
        assert len(devices) == 40

    def test_a_phase_waits_for_its_devices_to_report(self, v1, v2):
        fleet(10)
        rollout = start_rollout(v2, phases=[0.5, 1.0], gates=GATES)
        for device in Device.objects.filter(pk__in=assigned_devices(rollout)):
            beat(device)  # delivered, not installed yet
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "held"
        assert "report" in last_decision(rollout, "hold").reason
        assert last_decision(rollout, "hold").evidence["install"]["phase_delivered"] == 5


# --- timeouts ------------------------------------------------------------------------------------


class TestTimeouts:
    def test_a_delivered_assignment_stuck_in_progress_fails_after_its_deadline(self, v1, v2):
        stuck, away = fleet(2)
        rollout = start_rollout(v2, phases=[1.0], download_timeout_minutes=30)
        before = timezone.now()
        beat(stuck)  # delivered; the device never switches
        row = assignment(rollout, stuck)
        assert row.deadline_at - row.delivered_at == timedelta(minutes=30)
        assert fail_timed_out(before + timedelta(minutes=29)) == 0
        assert fail_timed_out(before + timedelta(minutes=31)) == 1
        row.refresh_from_db()
        assert (row.state, row.reason) == (AssignmentState.FAILED, "timed out after 30 min")
        timeout = last_decision(rollout, "timeout")
        assert timeout.evidence["count"] == 1
        assert timeout.evidence["devices"] == [str(stuck.pk)]
        assert assignment(rollout, away).state == AssignmentState.ASSIGNED
        assert beat(stuck)["model"]["version"] == OLD

    def test_a_late_install_after_a_timeout_still_counts(self, v1, v2):
        (device,) = fleet(1)
        rollout = start_rollout(v2, phases=[1.0])
        beat(device)
        fail_timed_out(timezone.now() + timedelta(hours=1))
        beat(device, NEW)
        assert assignment(rollout, device).state == AssignmentState.ACTIVE

    def test_downloading_assignments_time_out_too_and_the_beat_task_finds_them(self, v1, v2):
        (device,) = fleet(1)
        rollout = start_rollout(v2, phases=[1.0])
        beat(device)
        assert rollouts.downloadable(device, v2.pk) == v2
        assert assignment(rollout, device).state == AssignmentState.DOWNLOADING
        assert tick_all(timezone.now() + timedelta(minutes=31))["timed_out"] == 1
        assert assignment(rollout, device).state == AssignmentState.FAILED


# --- preflight -----------------------------------------------------------------------------------


class TestPreflight:
    @pytest.mark.parametrize(
        ("runtime", "reason"),
        [
            (RUNTIME, ""),
            ({**RUNTIME, "numpy": "1.100.0"}, ""),
            ({**RUNTIME, "memory_total_mb": 256}, "has 256 MB of memory, needs 512 MB"),
            ({**RUNTIME, "numpy": "1.9.3"}, "runs numpy 1.9.3, needs 1.26 or later"),
            ({k: v for k, v in RUNTIME.items() if k != "numpy"}, "does not report numpy version"),
            ({k: v for k, v in RUNTIME.items() if k != "memory_total_mb"}, "does not report its memory"),
            ({**RUNTIME, "client": "dev"}, "reports an unreadable client version 'dev'"),
            ({}, "does not report its memory"),
        ],
    )
    def test_it_compares_memory_and_runtime_versions_numerically(self, runtime, reason):
        needs = ModelVersion(min_memory_mb=512, runtime={"numpy": "1.26", "client": "0.1"})
        assert rollouts.preflight(needs, runtime) == reason

    def test_devices_that_cannot_run_the_version_are_excluded_with_the_reason(self, v1):
        needy = version(min_memory_mb=512, runtime={"numpy": "1.26"})
        able = fleet(3, prefix="able")
        small = fleet(1, prefix="small", runtime={**RUNTIME, "memory_total_mb": 256})
        silent = fleet(1, prefix="silent", runtime={"memory_total_mb": 2048})
        rollout = start_rollout(needy, phases=[1.0], gates=GATES)
        assert assigned_devices(rollout) == {device.pk for device in able}
        assert assignment(rollout, small[0]).reason == "has 256 MB of memory, needs 512 MB"
        assert assignment(rollout, silent[0]).state == AssignmentState.EXCLUDED
        exclusion = last_decision(rollout, "exclude").evidence
        assert exclusion["count"] == 2
        assert exclusion["reasons"]["does not report numpy version"] == 1
        assert beat(small[0])["model"] is None
        # Excluded devices weigh on no gate: the others complete it.
        install(able)
        assert tick(rollout, rollout.phase_started_at + timedelta(minutes=11)) == "completed"

    def test_a_device_that_reports_what_was_missing_joins_on_a_later_tick(self, v1):
        needy = version(runtime={"numpy": "1.26"})
        (silent,) = fleet(1, runtime={"memory_total_mb": 2048})
        rollout = start_rollout(needy, phases=[1.0])
        assert assignment(rollout, silent).state == AssignmentState.EXCLUDED
        beat(silent, runtime=RUNTIME)
        tick(rollout)
        assert assignment(rollout, silent).state == AssignmentState.ASSIGNED
        assert beat(silent)["model"]["version"] == needy.label

    def test_a_version_declaring_an_unreadable_minimum_is_refused(self, v1):
        with pytest.raises(RolloutError, match="unusable runtime minimum"):
            start_rollout(version(runtime={"numpy": "latest"}))


# --- targets -------------------------------------------------------------------------------------


class TestTargets:
    def test_a_group_rollout_reaches_its_groups_and_devices_joining_them_later(self, v1, v2):
        lab = DeviceGroup.objects.create(name="lab")
        inside = fleet(3, prefix="lab", group=lab)
        outside = fleet(3, prefix="out")
        rollout = start_rollout(v2, target_kind="groups", groups=[lab], phases=[1.0])
        assert assigned_devices(rollout) == {device.pk for device in inside}
        services.move_to_group([outside[0].pk], lab)
        assert tick(rollout) == "assigned"
        assert outside[0].pk in assigned_devices(rollout)
        assert last_decision(rollout, "assign").evidence["assigned"] == 1

    def test_a_list_rollout_reaches_only_the_listed_devices(self, v1, v2):
        devices = fleet(4)
        rollout = start_rollout(v2, target_kind="devices", devices=devices[:2], phases=[1.0])
        assert assigned_devices(rollout) == {devices[0].pk, devices[1].pk}
        assert beat(devices[2])["model"] is None

    def test_a_saved_filter_matches_all_tags_and_the_hardware_of_devices_joining_later(self, v1, v2):
        both, one_tag, other_board = fleet(3)
        for device, tags, hardware in (
            (both, ["camera", "outdoor"], "pi-zero"),
            (one_tag, ["camera"], "pi-zero"),
            (other_board, ["camera", "outdoor"], "pi-5"),
        ):
            services.set_tags(device, tags)
            Device.objects.filter(pk=device.pk).update(hardware=hardware)
        spec = {"tags": ["camera", "outdoor"], "hardware": "pi-zero"}
        rollout = start_rollout(v2, target_kind="filter", target_filter=spec, phases=[1.0])
        assert assigned_devices(rollout) == {both.pk}
        (late,) = fleet(1, prefix="late")
        services.set_tags(late, ["outdoor", "camera", "night"])
        Device.objects.filter(pk=late.pk).update(hardware="pi-zero")
        tick(rollout)
        assert assigned_devices(rollout) == {both.pk, late.pk}

    @pytest.mark.parametrize(
        ("spec", "message"),
        [({"colour": "red"}, "'colour'"), ({"status": "asleep"}, "status must be one of"), ({"tags": "a"}, "tags")],
    )
    def test_a_bad_saved_filter_is_refused_saying_what_is_wrong(self, v1, v2, spec, message):
        with pytest.raises(ValidationError, match=message):
            start_rollout(v2, target_kind="filter", target_filter=spec)
        assert not Rollout.objects.exists()

    def test_a_completed_rollout_assigns_joiners_until_a_newer_one_supersedes_it(self, v1, v2):
        rollout, _ = canary_rollout(v2, n=3, phases=[1.0])
        tick(rollout, rollout.phase_started_at + timedelta(minutes=11))
        (late,) = fleet(1, prefix="late")
        assert tick_all()["rollouts"] == {str(rollout.pk): "assigned"}
        assert beat(late)["model"]["version"] == NEW
        newer = start_rollout(version(), phases=[0.5, 1.0])
        assert newer.baseline == v2  # the completed rollout made v2 the champion
        (later,) = fleet(1, prefix="later")
        assert str(rollout.pk) not in tick_all()["rollouts"]
        assert not rollout.assignments.filter(device=later).exists()


# --- operators -----------------------------------------------------------------------------------


class TestOperators:
    def test_an_approval_step_holds_every_assignment_until_approved(self, v1, v2, operator):
        devices = fleet(5)
        rollout = start_rollout(v2, require_approval=True, phases=[1.0], by=operator)
        assert rollout.status == RolloutStatus.AWAITING_APPROVAL
        assert tick(rollout) == "idle"
        assert beat(devices[0])["model"] is None
        approve(rollout, by=operator)
        assert rollout.status == RolloutStatus.RUNNING
        assert len(assigned_devices(rollout)) == 5
        assert (last_decision(rollout, "approve").by, last_decision(rollout, "approve").automatic) == (operator, False)
        with pytest.raises(RolloutError, match="running"):
            approve(rollout, by=operator)

    def test_pause_stops_advancing_and_assigning_until_resumed(self, v1, v2):
        rollout, _ = canary_rollout(v2)
        due = observe_phase(rollout)
        pause(rollout, reason="checking the dashboards")
        assert tick(rollout, due) == "idle"
        (late,) = fleet(1, prefix="late")
        tick(rollout, due)
        assert not rollout.assignments.filter(device=late).exists()
        assert rollout.reason == "checking the dashboards"
        resume(rollout)
        # The joiner grew the target to 21: the phase covers ceil(10% × 21) = 3 devices now.
        assert len(assigned_devices(rollout)) == 3
        assert tick(rollout, due) == "advanced"
        assert [action for action in actions(rollout) if action != "assign"][-3:] == ["pause", "resume", "advance"]
        assert last_decision(rollout, "pause").automatic is False

    def test_transitions_the_state_does_not_allow_are_refused_with_a_reason(self, v1, v2):
        rollout, _ = canary_rollout(v2, n=3, phases=[1.0])
        tick(rollout, rollout.phase_started_at + timedelta(minutes=11))
        assert rollout.status == RolloutStatus.COMPLETED
        for action in (resume, pause, cancel, advance):
            with pytest.raises(RolloutError, match="completed"):
                action(rollout)

    def test_one_live_rollout_per_family(self, v1, v2):
        start_rollout(v2)
        with pytest.raises(RolloutError, match="already has a live rollout"):
            start_rollout(version())

    def test_archived_versions_and_bad_phases_or_gates_are_refused(self, v1, v2):
        with pytest.raises(ValidationError, match="ending at 1"):
            start_rollout(v2, phases=[0.5, 0.2])
        with pytest.raises(ValidationError, match="'max_errors'"):
            start_rollout(v2, gates={"max_errors": 3})
        archived = version()
        ModelVersion.objects.filter(pk=archived.pk).update(status=VersionStatus.ARCHIVED)
        archived.refresh_from_db()
        with pytest.raises(RolloutError, match="archived"):
            start_rollout(archived)
        assert not Rollout.objects.exists()

    def test_the_baseline_is_the_champion_unless_it_is_the_version_itself(self, v1, v2):
        assert start_rollout(v2).baseline == v1
        Rollout.objects.all().delete()
        assert start_rollout(v1).baseline is None

    def test_a_manual_rollback_of_a_completed_rollout_takes_the_fleet_and_the_champion_back(self, v1, v2, operator):
        rollout, devices = canary_rollout(v2, n=3, phases=[1.0])
        tick(rollout, rollout.phase_started_at + timedelta(minutes=11))
        rollback(rollout, by=operator, reason="customers complain")
        assert rollout.status == RolloutStatus.HALTED
        assert versions.alias_version(v2.family, CHAMPION) == v1
        assert all(beat(device)["model"]["version"] == OLD for device in devices)
        decision = last_decision(rollout, "rollback")
        assert (decision.reason, decision.by, decision.evidence["rolling_back"]) == ("customers complain", operator, 3)

    def test_cancelling_sends_devices_back_to_the_baseline_without_a_halt_alert(self, v1, v2):
        rollout, devices = canary_rollout(v2)
        cancel(rollout, reason="a better version is coming")
        assert rollout.status == RolloutStatus.CANCELLED
        assert {beat(device)["model"]["version"] for device in canary(rollout)} == {OLD}
        assert alerts.halted_findings(None, {"window_hours": 1}, timezone.now()) == []
        start_rollout(version())  # the family is free again

    def test_without_a_baseline_a_rollback_leaves_devices_on_their_bundle(self, v1, v2):
        rollout, devices = canary_rollout(v2, n=3, phases=[1.0], baseline=None)
        rollback(rollout)
        states = set(rollout.assignments.values_list("state", flat=True))
        assert states == {AssignmentState.ROLLED_BACK}
        assert beat(devices[0])["model"] is None


# --- records, events and schedule ----------------------------------------------------------------


class TestRecords:
    def test_the_summary_counts_states_per_phase(self, v1, v2):
        rollout, devices = canary_rollout(v2, n=10, phases=[0.2, 1.0])
        summary = rollouts.rollout_summary(rollout)
        assert summary["phases"][0] == {"share": 0.2, "counts": {"active": 2}}
        assert summary["totals"]["active"] == 2
        assert (summary["version"], summary["baseline"], summary["status"]) == (NEW, OLD, "running")
        assert summary["last_decision"]["action"] == "assign"

    def test_state_changes_are_published_live_after_commit(
        self, v1, v2, monkeypatch, django_capture_on_commit_callbacks
    ):
        sent = []
        monkeypatch.setattr(rollouts.live, "_send", lambda topic, event, data: sent.append((topic, event, data())))
        with django_capture_on_commit_callbacks(execute=True):
            rollout = start_rollout(v2, phases=[1.0])
        assert [(topic, event) for topic, event, _ in sent] == [("registry", "rollout.updated")]
        assert sent[0][2]["id"] == rollout.pk
        assert sent[0][2]["action"] == "start"

    def test_the_tick_runs_from_beat_every_30_seconds(self, v1, v2):
        from django_celery_beat.models import PeriodicTask

        schedules.install_default_schedules()
        task = PeriodicTask.objects.get(task="registry.tick_rollouts")
        assert (task.interval.every, task.interval.period) == (30, "seconds")
        rollout, _ = canary_rollout(v2)
        assert tasks.tick_rollouts() == {"timed_out": 0, "rollouts": {str(rollout.pk): "waiting"}}


# --- a large fleet -------------------------------------------------------------------------------


def _bulk_install(rollout: Rollout) -> None:
    """Every assigned device of the phase reports the new version (set-based, like 1,000 heartbeats)."""
    now = timezone.now()
    rollout.assignments.filter(state=AssignmentState.ASSIGNED).update(
        state=AssignmentState.ACTIVE, delivered_at=now, active_at=now
    )


def _run_a_large_rollout(n: int, django_assert_max_num_queries) -> None:
    v2 = version()
    fleet(n)
    with django_assert_max_num_queries(40):
        rollout = start_rollout(v2, phases=[0.05, 0.25, 1.0], gates=GATES)
    assert len(assigned_devices(rollout)) == rollouts.phase_size(0.05, n)
    _bulk_install(rollout)
    due = observe_phase(rollout)
    with django_assert_max_num_queries(30):
        assert tick_all(due)["rollouts"] == {str(rollout.pk): "advanced"}
    assert len(assigned_devices(rollout)) == rollouts.phase_size(0.25, n)
    _bulk_install(rollout)
    due = observe_phase(Rollout.objects.get(pk=rollout.pk), canary_confidence=0.4)
    with django_assert_max_num_queries(30):
        assert tick_all(due)["rollouts"] == {str(rollout.pk): "halted"}
    assert rollout.assignments.filter(reason=f"rolling back to {OLD}").count() == rollouts.phase_size(0.25, n)
    (device,) = Device.objects.filter(pk__in=assigned_devices(rollout)).order_by("pk")[:1]
    with django_assert_max_num_queries(1):
        assert rollouts.desired_state(device)["model"]["version"] == OLD


def test_a_rollout_over_hundreds_of_devices_ticks_in_a_bounded_number_of_queries(v1, django_assert_max_num_queries):
    _run_a_large_rollout(300, django_assert_max_num_queries)


@pytest.mark.postgres
def test_a_rollout_to_a_thousand_devices_ticks_in_bulk_on_postgres(v1, django_assert_max_num_queries):
    _run_a_large_rollout(1000, django_assert_max_num_queries)
