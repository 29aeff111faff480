"""``manage.py policies|rollouts|versions``: the admin's actions for scripts, with tables on
stdout, reasons on stderr, and exit codes 0 (done), 1 (refused by a rule) and 2 (usage)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.core.management import load_command_class
from django.db import connections

from conftest import make_device
from devices.models import DeviceGroup, DeviceTag
from registry import tasks, versions
from registry.models import CHAMPION, AliasEvent, JobStatus, RetrainingPolicy, Rollout, RolloutStatus, TrainingJob
from registry.tests.factories import digits_family, policy
from registry.tests.test_api import fake_version

pytestmark = pytest.mark.django_db


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys, monkeypatch):
    """``run("policies", "list")``: the command as `manage.py` runs it (argument parsing, exit
    status), in this test's transaction."""
    monkeypatch.setattr(connections, "close_all", lambda: None)  # run_from_argv closes them when done

    def run(name: str, *args: str) -> Run:
        capsys.readouterr()
        command = load_command_class("registry", name)
        try:
            # System checks are not the commands' output (with Redis set they warn about local storage).
            command.run_from_argv(["manage.py", name, "--skip-checks", *args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


# --- policies ---------------------------------------------------------------------------------


def test_policies_list_shows_each_policy_with_its_state(run):
    policy(name="nightly")
    policy(name="weekly", enabled=False, consecutive_failures=2)

    result = run("policies", "list")

    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "FAMILY", "STATE"]
    nightly = next(line for line in lines if "nightly" in line)
    weekly = next(line for line in lines if "weekly" in line)
    assert "enabled" in nightly and "paused" in weekly and "closed (2 failure(s) in a row)" in weekly


def test_running_a_policy_queues_a_job_and_a_second_run_exits_1_with_the_reason(run):
    rule = policy(name="nightly")

    first = run("policies", "run", "nightly", "--reason", "labels arrived")
    second = run("policies", "run", str(rule.pk))

    job = TrainingJob.objects.get()
    assert first.code == 0 and f"Started job {job.pk} of policy 'nightly'" in first.out
    assert job.trigger == "manual" and job.evidence["reason"] == "labels arrived"
    assert second.code == 1 and f"job {job.pk} is queued" in second.err and second.out == ""


@pytest.mark.parametrize("args", [["run", "nope"], ["pause", "999"], ["show", "nope"], ["frobnicate"], ["run"]])
def test_an_unknown_policy_or_subcommand_exits_2(run, args):
    result = run("policies", *args)
    assert result.code == 2 and result.err, result
    assert not TrainingJob.objects.exists()


@pytest.fixture
def finishing_jobs(monkeypatch):
    """Jobs end as soon as they are enqueued, with the status the test sets."""
    outcome = {"status": JobStatus.ARCHIVED, "reason": "no better than the champion", "error": ""}

    def finish(pk):
        TrainingJob.objects.filter(pk=pk).update(progress=1.0, stage="done", **outcome)

    monkeypatch.setattr(tasks.run_training_job, "delay_on_commit", finish)
    return outcome


def test_run_wait_exits_0_when_the_job_finishes_and_1_when_it_fails(run, finishing_jobs):
    rule = policy(name="nightly", cooldown_minutes=0)

    archived = run("policies", "run", "nightly", "--wait")
    finishing_jobs.update(status=JobStatus.FAILED, reason="failed", error="TrainingError: no labels")
    failed = run("policies", "run", str(rule.pk), "--wait", "--poll", "0")

    assert archived.code == 0 and "trained, not promoted: no better than the champion" in archived.out
    assert failed.code == 1 and "failed" in failed.err and "TrainingError: no labels" in failed.err


def test_run_wait_gives_up_after_the_timeout_with_exit_1(run):
    policy(name="nightly")
    result = run("policies", "run", "nightly", "--wait", "--timeout", "0")
    assert result.code == 1 and "still queued after 0 s" in result.err


def test_pause_and_resume_switch_the_policy_and_resume_closes_the_breaker(run):
    rule = policy(name="nightly", consecutive_failures=3)
    RetrainingPolicy.objects.filter(pk=rule.pk).update(breaker_open_until="2999-01-01T00:00:00Z")

    paused = run("policies", "pause", "nightly")
    assert paused.code == 0 and "paused" in paused.out and not RetrainingPolicy.objects.get(pk=rule.pk).enabled
    resumed = run("policies", "resume", str(rule.pk))
    rule.refresh_from_db()
    assert resumed.code == 0 and rule.enabled and rule.breaker_open_until is None and rule.consecutive_failures == 0


def test_show_says_what_the_policy_would_decide_now(run):
    policy(name="nightly", enabled=False)
    result = run("policies", "show", "nightly")
    assert result.code == 0 and "would not start a job: policy is disabled" in result.out


# --- rollouts ---------------------------------------------------------------------------------


@pytest.fixture
def lab(db):
    group = DeviceGroup.objects.create(name="lab")
    return group, [make_device(f"lab-{n}", group).device for n in range(4)]


def test_a_rollout_is_started_to_a_group_awaiting_approval_then_approved(run, lab, django_user_model):
    fake_version(), fake_version()
    django_user_model.objects.create_user("ops")

    started = run("rollouts", "start", "digits@2", "--phases", "0.25,0.5,1", "--group", "lab", "--approval")
    rollout = Rollout.objects.get()
    approved = run("rollouts", "approve", "digits", "--by", "ops")

    assert started.code == 0 and f"Started rollout {rollout.pk} of digits@2." in started.out
    assert rollout.status == RolloutStatus.AWAITING_APPROVAL and rollout.phases == [0.25, 0.5, 1.0]
    assert list(rollout.target_groups.values_list("name", flat=True)) == ["lab"]
    assert approved.code == 0 and "now running, phase 1/3 (25%)" in approved.out
    assert rollout.decisions.get(action="approve").by.username == "ops"
    assert rollout.assignments.count() == 1


def test_a_rollout_to_devices_or_a_filter_targets_them(run, lab):
    _, devices = lab
    version = fake_version()
    tag = DeviceTag.objects.create(name="outdoor")
    devices[3].tags.add(tag)

    to_devices = run(
        "rollouts",
        "start",
        str(version.pk),
        "--device",
        str(devices[0].pk),
        "--device",
        str(devices[1].pk),
        "--phases",
        "1",
    )
    run("rollouts", "cancel", "digits")
    to_filter = run("rollouts", "start", "digits@1", "--filter", '{"tags": ["outdoor"]}', "--phases", "1")

    first, second = Rollout.objects.order_by("id")
    assert to_devices.code == 0 and first.target_kind == "devices"
    assert set(first.assignments.values_list("device_id", flat=True)) == {devices[0].pk, devices[1].pk}
    assert to_filter.code == 0 and second.target_kind == "filter"
    assert list(second.assignments.values_list("device_id", flat=True)) == [devices[3].pk]


@pytest.mark.parametrize(
    "args, message",
    [
        (["digits@9"], "digits has no version or alias '9'"),
        (["seven"], "give a version as family@number"),
        (["digits@1", "--group", "nowhere"], "Unknown device group(s): nowhere"),
        (["digits@1", "--device", "not-a-uuid"], "--device takes a device id"),
        (["digits@1", "--device", "00000000-0000-0000-0000-000000000001"], "Unknown device(s)"),
        (["digits@1", "--phases", "0.5,0.2"], "phases:"),
        (["digits@1", "--phases", "half"], "--phases 'half'"),
        (["digits@1", "--filter", "{tags"], "--filter: not JSON"),
        (["digits@1", "--filter", '{"colour": "red"}'], "Unknown filter key 'colour'"),
        (["digits@1", "--gates", '{"nonsense": 1}'], "Unknown gate 'nonsense'"),
        (["digits@1", "--group", "lab", "--filter", "{}"], "Give one target"),
        (["digits@1", "--by", "nobody"], "--by 'nobody': no such user"),
    ],
)
def test_bad_start_arguments_exit_2_and_start_nothing(run, lab, args, message):
    fake_version()
    result = run("rollouts", "start", *args)
    assert result.code == 2 and message in result.err, result
    assert not Rollout.objects.exists()


def test_refusals_by_the_rollout_rules_exit_1_with_the_reason(run, lab):
    fake_version()
    assert run("rollouts", "start", "digits@1", "--group", "lab").code == 0

    second = run("rollouts", "start", "digits@1")
    resume = run("rollouts", "resume", "digits")
    advance = run("rollouts", "advance", "digits")

    assert second.code == 1 and "already has a live rollout" in second.err
    assert resume.code == 1 and "Cannot resume" in resume.err and "it is running" in resume.err
    assert advance.code == 1 and "gates do not pass" in advance.err
    assert run("rollouts", "advance", "digits", "--force").code == 0
    assert Rollout.objects.get().phase == 1


def test_pause_resume_rollback_and_status_and_list_output(run, lab):
    fake_version(), fake_version()
    versions.move_alias(digits_family(), CHAMPION, versions.resolve("digits", "1"))
    run("rollouts", "start", "digits@2", "--group", "lab", "--phases", "0.5,1", "--name", "canary")
    rollout = Rollout.objects.get()

    paused = run("rollouts", "pause", str(rollout.pk), "--reason", "weekend")
    resumed = run("rollouts", "resume", str(rollout.pk))
    rolled_back = run("rollouts", "rollback", str(rollout.pk), "--reason", "bad canary")
    status = run("rollouts", "status", str(rollout.pk))
    listed = run("rollouts", "list")

    assert [r.code for r in (paused, resumed, rolled_back, status, listed)] == [0, 0, 0, 0, 0]
    assert "now paused" in paused.out and "now running" in resumed.out and "now halted" in rolled_back.out
    assert "digits@2 (baseline digits@1), halted" in status.out
    assert "PHASE  SHARE" in status.out and "rollback" in status.out and "bad canary" in status.out
    row = next(line for line in listed.out.splitlines() if line.startswith(str(rollout.pk)))
    assert row.split()[:5] == [str(rollout.pk), "digits", "digits@2", "halted", "1/2"] and "canary" in row
    assert run("rollouts", "status", "999").code == 2


# --- versions ---------------------------------------------------------------------------------


def test_versions_list_show_and_alias(run):
    fake_version(), fake_version()

    moved = run("versions", "alias", "digits", "champion", "2", "--reason", "won")
    same = run("versions", "alias", "digits", "champion", "digits@2")
    listed = run("versions", "list", "--family", "digits")
    shown = run("versions", "show", "digits@champion")
    removed = run("versions", "alias", "digits", "champion", "--remove")

    assert moved.code == 0 and "digits@champion: nothing → digits@2." in moved.out
    assert same.code == 0 and "already points at digits@2" in same.out
    assert listed.out.splitlines()[1].split()[:3] == ["digits@2", "registered", "training"] and "champion" in listed.out
    assert shown.code == 0 and shown.out.startswith("digits@2 (registered)")
    assert removed.code == 0 and "(removed)" in removed.out
    assert [e.reason for e in AliasEvent.objects.order_by("id")] == ["won", "from the command line"]


def test_versions_alias_refusals_and_usage_errors(run):
    fake_version(status="archived")
    archived = run("versions", "alias", "digits", "champion", "1")
    unknown = run("versions", "alias", "digits", "champion", "7")
    both = run("versions", "alias", "digits", "champion", "1", "--remove")
    bad_name = run("versions", "alias", "digits", "Champion!", "1")
    assert archived.code == 1 and "archived" in archived.err
    assert [r.code for r in (unknown, both, bad_name)] == [2, 2, 2]
    assert not AliasEvent.objects.exists()


def test_an_unknown_rollout_device_id_is_named(run, lab):
    missing = str(uuid.uuid4())
    fake_version()
    result = run("rollouts", "start", "digits@1", "--device", missing)
    assert result.code == 2 and missing in result.err
