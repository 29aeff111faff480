"""The registry admin: version pages that cost the same at 10,000 versions, champion /
challenger / archive actions through registry.versions with their refusals, read-only history,
policies run, paused and resumed by hand, jobs cancelled, rollouts started from the add form
and steered by actions, and read-only assignments and decisions."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conftest import make_device
from devices.models import DeviceGroup
from registry import versions
from registry.models import (
    CHALLENGER,
    CHAMPION,
    Alias,
    AliasEvent,
    JobStatus,
    ModelFamily,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutAssignment,
    RolloutDecision,
    RolloutStatus,
    TrainingJob,
    VersionStatus,
)
from registry.tests.factories import digits_family, policy
from registry.tests.test_api import ALL_REGISTRY, VIEW_ONLY, bulk_versions, fake_version, staff_with

pytestmark = pytest.mark.django_db


def changelist(model_name: str) -> str:
    return reverse(f"admin:registry_{model_name}_changelist")


def change(model_name: str, pk) -> str:
    return reverse(f"admin:registry_{model_name}_change", args=[pk])


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def act(client, model_name: str, action: str, *objects, **extra):
    data = {"action": action, "_selected_action": [obj.pk for obj in objects], **extra}
    return client.post(changelist(model_name), data, follow=True)


ROLLOUT_RECORDS = ["view_rolloutassignment", "view_rolloutdecision"]


@pytest.fixture
def manager(client, django_user_model):
    """Staff with every registry permission, signed in to the admin."""
    client.force_login(staff_with(django_user_model, "mona", *ALL_REGISTRY, *ROLLOUT_RECORDS))
    return client


@pytest.fixture
def looker(client, django_user_model):
    """Staff who may only look."""
    client.force_login(staff_with(django_user_model, "luke", *VIEW_ONLY, *ROLLOUT_RECORDS))
    return client


# --- versions ---------------------------------------------------------------------------------


def test_the_version_list_costs_the_same_at_30_or_10000_versions_and_never_counts_them_all(manager):
    family = digits_family()
    bulk_versions(family, 30)
    with CaptureQueriesContext(connection) as small:
        assert manager.get(changelist("modelversion")).status_code == 200
    bulk_versions(family, 9970, start=31)
    with CaptureQueriesContext(connection) as large:
        response = manager.get(changelist("modelversion"), {"p": "3"})

    assert response.status_code == 200
    shown = [version.number for version in response.context["cl"].result_list]
    assert shown[0] == 10_000 - 2 * 100 and len(shown) == 100  # page 3 of the newest first
    assert len(small) == len(large), [q["sql"] for q in large.captured_queries]
    counts = [q["sql"] for q in large.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_the_version_list_shows_label_status_source_aliases_and_metrics(manager):
    family = digits_family()
    version = fake_version(
        family,
        metrics={
            "candidate": {"holdout_accuracy": 0.912, "drift_samples": 4, "drift_accuracy": 0.8},
            "champion": {"holdout_accuracy": 0.85},
        },
    )
    versions.move_alias(family, CHALLENGER, version)

    page = manager.get(changelist("modelversion")).content.decode()

    for text in ("digits@1", "Registered", "training", "challenger", "held-out 0.912 (champion 0.850) · drift 0.800"):
        assert text in page, text


def test_a_version_is_found_by_label_or_number(manager):
    fake_version(), fake_version()
    by_label = manager.get(changelist("modelversion"), {"q": "digits@2"}).context["cl"].result_list
    by_number = manager.get(changelist("modelversion"), {"q": "1"}).context["cl"].result_list
    assert [v.number for v in by_label] == [2] and [v.number for v in by_number] == [1]


def test_make_champion_and_challenger_move_the_alias_and_record_who(manager):
    family = digits_family()
    first, second = fake_version(family), fake_version(family)

    champion = act(manager, "modelversion", "make_champion", first)
    challenger = act(manager, "modelversion", "make_challenger", second)
    again = act(manager, "modelversion", "make_champion", first)

    assert messages_of(champion)[-1] == "digits@1 is now champion."
    assert messages_of(challenger)[-1] == "digits@2 is now challenger."
    assert messages_of(again)[-1] == "digits@1 already is champion."
    assert versions.alias_version(family, CHAMPION) == first and versions.alias_version(family, CHALLENGER) == second
    assert AliasEvent.objects.filter(alias=CHAMPION).get().by.username == "mona"


def test_moving_an_alias_needs_exactly_one_version_and_a_registered_one(manager):
    first, second = fake_version(), fake_version(status=VersionStatus.ARCHIVED)
    two = act(manager, "modelversion", "make_champion", first, second)
    archived = act(manager, "modelversion", "make_champion", second)
    assert messages_of(two)[-1] == "Select exactly one version to make champion."
    assert messages_of(archived)[-1] == "digits@2 cannot be champion: digits@2 is archived."
    assert not AliasEvent.objects.exists()


def test_archiving_refuses_a_version_with_an_alias_and_says_why(manager):
    family = digits_family()
    kept, old = fake_version(family), fake_version(family)
    versions.move_alias(family, CHAMPION, kept)

    response = act(manager, "modelversion", "archive", kept, old)

    assert "digits@1 was not archived: digits@1 still has aliases (champion)." in messages_of(response)
    assert "Archived 1 version(s)." in messages_of(response)
    assert ModelVersion.objects.get(pk=kept.pk).status == VersionStatus.REGISTERED
    assert ModelVersion.objects.get(pk=old.pk).status == VersionStatus.ARCHIVED


def test_without_the_change_permission_there_are_no_version_actions(looker):
    version = fake_version()
    response = looker.get(changelist("modelversion"))
    form = response.context["action_form"]
    assert response.status_code == 200 and (form is None or "make_champion" not in dict(form.fields["action"].choices))
    act(looker, "modelversion", "make_champion", version)
    assert not AliasEvent.objects.exists()


def test_versions_and_the_alias_history_are_read_only(manager):
    family = digits_family()
    version = fake_version(family)
    event = versions.move_alias(family, CHAMPION, version)

    page = manager.get(change("modelversion", version.pk))
    assert page.status_code == 200 and version.bundle_sha256 in page.content.decode()
    manager.post(change("modelversion", version.pk), {"number": "9", "status": "archived"})
    assert ModelVersion.objects.get(pk=version.pk).number == 1
    assert manager.get(reverse("admin:registry_modelversion_add")).status_code == 403
    assert manager.get(reverse("admin:registry_aliasevent_add")).status_code == 403
    assert manager.get(reverse("admin:registry_aliasevent_delete", args=[event.pk])).status_code == 403
    manager.post(change("aliasevent", event.pk), {"alias": "challenger"})
    assert AliasEvent.objects.get(pk=event.pk).alias == CHAMPION
    history = manager.get(changelist("aliasevent")).content.decode()
    assert "digits@1" in history and "champion" in history


# --- policies and jobs ------------------------------------------------------------------------


def test_run_now_queues_a_job_and_a_busy_policy_is_reported(manager):
    rule = policy(name="nightly")

    first = act(manager, "retrainingpolicy", "run_now", rule)
    second = act(manager, "retrainingpolicy", "run_now", rule)

    job = TrainingJob.objects.get()
    assert messages_of(first)[-1] == f"nightly: job {job.pk} queued."
    assert messages_of(second)[-1] == f"Not started: nightly: job {job.pk} is queued."
    assert job.requested_by.username == "mona" and job.trigger == "manual"


def test_pause_and_resume_switch_policies_and_the_change_page_shows_state(manager):
    rule = policy(name="nightly", consecutive_failures=2)

    act(manager, "retrainingpolicy", "pause", rule)
    assert not RetrainingPolicy.objects.get(pk=rule.pk).enabled
    act(manager, "retrainingpolicy", "resume", rule)
    assert RetrainingPolicy.objects.get(pk=rule.pk).enabled

    page = manager.get(change("retrainingpolicy", rule.pk)).content.decode()
    assert "Consecutive failures" in page and "would not start a job" in page


def test_policy_actions_need_the_change_permission(looker):
    rule = policy(name="nightly")
    act(looker, "retrainingpolicy", "run_now", rule)
    act(looker, "retrainingpolicy", "pause", rule)
    assert not TrainingJob.objects.exists() and RetrainingPolicy.objects.get(pk=rule.pk).enabled


def test_queued_jobs_are_cancelled_running_ones_are_left_and_details_are_shown(manager):
    family = digits_family()
    queued = TrainingJob.objects.create(family=family, trigger="manual")
    running = TrainingJob.objects.create(
        family=family, trigger="drift", status=JobStatus.RUNNING, progress=0.42, stage="search", error="slow disk"
    )

    response = act(manager, "trainingjob", "cancel_queued", queued, running)

    assert "Cancelled 1 job(s)." in messages_of(response)
    assert TrainingJob.objects.get(pk=queued.pk).status == JobStatus.CANCELLED
    assert TrainingJob.objects.get(pk=running.pk).status == JobStatus.RUNNING
    page = manager.get(change("trainingjob", running.pk)).content.decode()
    assert "42%" in page and "search" in page and "slow disk" in page


# --- rollouts ---------------------------------------------------------------------------------


@pytest.fixture
def lab(db):
    group = DeviceGroup.objects.create(name="lab")
    for n in range(4):
        make_device(f"lab-{n}", group)
    return group


def start_form(version, **overrides) -> dict:
    return {
        "version": str(version.pk),
        "name": "",
        "target_kind": "all",
        "target_filter": "{}",
        "phases": "[0.5, 1.0]",
        "gates": "{}",
        "auto_advance": "on",
        "auto_rollback": "on",
        "download_timeout_minutes": "30",
        **overrides,
    }


def test_the_add_form_starts_a_rollout_through_the_service(manager, lab):
    version = fake_version()

    response = manager.post(
        reverse("admin:registry_rollout_add"),
        start_form(version, name="lab canary", target_kind="groups", target_groups=[str(lab.pk)]),
    )

    assert response.status_code == 302, response.content[:3000]
    rollout = Rollout.objects.get()
    assert rollout.name == "lab canary" and rollout.status == RolloutStatus.RUNNING
    assert rollout.created_by.username == "mona" and list(rollout.target_groups.all()) == [lab]
    assert rollout.decisions.filter(action="start").exists() and rollout.assignments.count() == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"phases": "[0.5, 0.2]"}, "Must be increasing shares"),
        ({"target_kind": "groups"}, "needs at least one group"),
        ({"gates": '{"nonsense": 1}'}, "Unknown gate"),
        ({"target_kind": "filter", "target_filter": '{"colour": 1}'}, "Unknown filter key"),
    ],
)
def test_the_add_form_shows_what_the_service_would_refuse(manager, lab, overrides, message):
    response = manager.post(reverse("admin:registry_rollout_add"), start_form(fake_version(), **overrides))
    assert response.status_code == 200 and message in response.content.decode()
    assert not Rollout.objects.exists()


def test_a_second_live_rollout_is_refused_by_the_form(manager, lab):
    version = fake_version()
    manager.post(reverse("admin:registry_rollout_add"), start_form(version))
    response = manager.post(reverse("admin:registry_rollout_add"), start_form(version))
    assert "already has a live rollout" in response.content.decode() and Rollout.objects.count() == 1


def test_rollout_actions_call_the_service_and_report_refusals(manager, lab):
    from registry.rollouts import start_rollout

    rollout = start_rollout(fake_version(), phases=[0.5, 1.0], require_approval=True)

    early = act(manager, "rollout", "pause", rollout)
    approved = act(manager, "rollout", "approve", rollout)
    refused = act(manager, "rollout", "advance", rollout)
    forced = act(manager, "rollout", "force_advance", rollout)
    cancelled = act(manager, "rollout", "cancel", rollout)

    assert "Cannot pause" in messages_of(early)[-1] and "awaiting approval" in messages_of(early)[-1]
    assert messages_of(approved)[-1].endswith("approved (running).")
    assert "gates do not pass" in messages_of(refused)[-1]
    assert messages_of(forced)[-1].endswith("advanced (running).")
    assert messages_of(cancelled)[-1].endswith("cancelled (cancelled).")
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.CANCELLED and rollout.phase == 1
    assert [d.by.username for d in rollout.decisions.filter(action__in=["approve", "advance", "cancel"])] == [
        "mona"
    ] * 3


def test_the_rollout_page_shows_counts_per_phase_and_the_decisions_read_only(manager, lab):
    from registry.rollouts import start_rollout

    rollout = start_rollout(fake_version(), phases=[0.5, 1.0], name="canary")

    page = manager.get(change("rollout", rollout.pk))
    text = page.content.decode()

    assert page.status_code == 200
    assert "<th>assigned</th>" in text and "<td>1 (50%)</td><td>2</td>" in text
    assert "Roll digits@1 out." in text and "Decisions (the newest 50)" in text
    manager.post(change("rollout", rollout.pk), {"status": "completed"})
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_without_the_change_permission_rollouts_are_only_read(looker, lab):
    from registry.rollouts import start_rollout

    rollout = start_rollout(fake_version(), require_approval=True)
    act(looker, "rollout", "approve", rollout)
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.AWAITING_APPROVAL
    assert looker.get(reverse("admin:registry_rollout_add")).status_code == 403


def test_assignments_filter_by_state_and_rollout_with_a_capped_count(manager, lab):
    from registry.rollouts import start_rollout

    rollout = start_rollout(fake_version(), phases=[1.0])
    RolloutAssignment.objects.filter(pk=rollout.assignments.first().pk).update(state="failed", reason="refused")

    failed = manager.get(changelist("rolloutassignment"), {"state__exact": "failed", "rollout__id__exact": rollout.pk})
    with CaptureQueriesContext(connection) as queries:
        everything = manager.get(changelist("rolloutassignment"))

    assert [a.state for a in failed.context["cl"].result_list] == ["failed"]
    assert len(everything.context["cl"].result_list) == 4
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "assignment" in q["sql"]]
    assert counts and all("LIMIT" in sql.upper() for sql in counts)
    assignment = rollout.assignments.first()
    manager.post(change("rolloutassignment", assignment.pk), {"state": "active"})
    assert RolloutAssignment.objects.get(pk=assignment.pk).state == assignment.state
    decisions = manager.get(changelist("rolloutdecision")).content.decode()
    assert "start" in decisions and "Roll digits@1 out." in decisions


# --- every page ---------------------------------------------------------------------------------

PAGES = {
    "modelfamily": ModelFamily,
    "modelversion": ModelVersion,
    "alias": Alias,
    "aliasevent": AliasEvent,
    "retrainingpolicy": RetrainingPolicy,
    "trainingjob": TrainingJob,
    "rollout": Rollout,
    "rolloutassignment": RolloutAssignment,
    "rolloutdecision": RolloutDecision,
}


@pytest.mark.parametrize("model_name", PAGES)
def test_every_registry_list_and_change_page_opens(manager, lab, model_name):
    from registry.rollouts import start_rollout

    family = digits_family()
    first, second = fake_version(family), fake_version(family)
    versions.move_alias(family, CHAMPION, first)
    job = TrainingJob.objects.create(family=family, policy=policy(name="nightly"), trigger="manual")
    ModelVersion.objects.filter(pk=second.pk).update(training_job=job, parent=first)
    start_rollout(ModelVersion.objects.get(pk=second.pk), phases=[1.0])

    listed = manager.get(changelist(model_name))
    shown = manager.get(change(model_name, PAGES[model_name].objects.order_by("-pk").first().pk))

    assert listed.status_code == 200 and len(listed.context["cl"].result_list) >= 1
    assert shown.status_code == 200, shown.content[:2000]


def test_the_family_page_links_its_aliases_and_keeps_its_name(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("sue", "sue@example.invalid", None))
    family = digits_family()
    versions.move_alias(family, CHAMPION, fake_version(family))

    page = client.get(changelist("modelfamily")).content.decode()
    saved = client.post(change("modelfamily", family.pk), {"name": "renamed", "description": "the digits"})

    assert "digits@1" in page and "up to digits@1" in page
    assert saved.status_code == 302, saved.content[:2000]
    family.refresh_from_db()
    assert family.name == "digits" and family.description == "the digits"
