"""The registry pages outside the admin: who may open them, what each shows (families, versions
and their metrics against the champion, alias history and "which version was it at T", training
jobs with their policies, rollouts with per-phase status and gate evidence), the actions that go
through the services (run a policy now, steer a rollout), their cost on big tables, and the live
wiring to the "registry" topic."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conftest import make_device
from drift.models import Incident, IncidentKind
from labeling.models import DatasetSnapshot
from labeling.tests.factories import digits
from registry import jobs, versions
from registry.models import (
    CHALLENGER,
    CHAMPION,
    AliasEvent,
    JobStatus,
    RetrainingPolicy,
    Rollout,
    RolloutStatus,
    TrainingJob,
)
from registry.rollouts import start_rollout, tick
from registry.tests.factories import digits_family, policy
from registry.tests.test_api import bulk_versions, fake_version, real_version
from registry.tests.test_rollouts import GATES, fleet, install, observe_phase
from registry.tests.test_rollouts import version as bundled_version

pytestmark = pytest.mark.django_db
INDEX = reverse("registry:index")
JOBS = reverse("registry:jobs")
ROLLOUTS = reverse("registry:rollouts")
VIEW_ONLY = [
    "view_modelfamily",
    "view_modelversion",
    "view_alias",
    "view_aliasevent",
    "view_retrainingpolicy",
    "view_trainingjob",
    "view_rollout",
    "view_rolloutassignment",
    "view_rolloutdecision",
]
CHANGES = ["change_retrainingpolicy", "change_rollout"]


# --- Personas ---------------------------------------------------------------------------------


def staff_with(django_user_model, username: str, codenames, *, extra=()) -> object:
    user = django_user_model.objects.create_user(username, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="registry", codename__in=codenames)
        | Permission.objects.filter(codename__in=extra)
    )
    return django_user_model.objects.get(pk=user.pk)  # fresh: no permission cache


@pytest.fixture
def registry_operator(django_user_model):
    """Sees the registry, runs policies, steers rollouts and may download bundles."""
    return staff_with(django_user_model, "rita", [*VIEW_ONLY, *CHANGES], extra=["view_datasetsnapshot"])


@pytest.fixture
def viewer(django_user_model):
    """Sees everything the registry pages show, changes nothing."""
    return staff_with(django_user_model, "vera", VIEW_ONLY)


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def as_operator(registry_operator):
    return client_for(registry_operator)


@pytest.fixture
def as_viewer(viewer):
    return client_for(viewer)


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def csrf_token(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


# --- Data -------------------------------------------------------------------------------------

METRICS = {
    "candidate": {
        "holdout_accuracy": 0.95,
        "holdout_samples": 120,
        "drift_accuracy": 0.875,
        "drift_samples": 40,
        "snapshot_accuracy": 0.9,
        "shipped_test_accuracy": 0.97,
        "per_class": {"3": 0.8, "7": 1.0},
    },
    "champion": {
        "holdout_accuracy": 0.9,
        "holdout_samples": 120,
        "drift_accuracy": 0.5,
        "drift_samples": 40,
        "snapshot_accuracy": 0.85,
        "shipped_test_accuracy": 0.97,
        "per_class": {"3": 0.85, "7": 0.9},
    },
    "samples": {"items": 600, "train": 480, "holdout": 120},
}
PARAMS = {"strategy": "replay", "k": 5, "n_components": 16, "train_counts": {"3": 40, "7": 44}}
MANIFEST = {
    "format": 1,
    "version": "digits@2",
    "classes": ["3", "7"],
    "feature_dim": 4,
    "trained_by_job": 1,
    "files": [{"path": "knn.npz", "sha256": "c0ffee" * 10 + "abcd", "size": 2048}],
}


def snapshot(version: int = 1) -> DatasetSnapshot:
    return DatasetSnapshot.objects.create(
        class_set=digits(), version=version, content_hash=f"{version:064x}", item_count=600
    )


@pytest.fixture
def world(registry_operator):
    """A shipped champion, a trained challenger with its whole lineage, the job and policy that
    made it, and a rollout of it."""
    family = digits_family()
    shipped = fake_version(family, source="shipped")
    rule = policy(family, name="digits on drift")
    job = TrainingJob.objects.create(
        family=family,
        policy=rule,
        status=JobStatus.PROMOTED,
        trigger="drift",
        evidence={"reason": "3 drift event(s) confirmed; 60 new labels"},
        progress=1.0,
        stage="done",
        result=METRICS,
        params=PARAMS,
        reason="candidate 0.950 vs champion 0.900 on 120 held-out samples: gain 0.050 >= margin 0.010",
        base_version=shipped,
    )
    incident = Incident.objects.create(
        kind=IncidentKind.POPULATION,
        evidence={},
        started_at=timezone.now(),
        ended_at=timezone.now(),
        device_count=12,
        event_count=12,
    )
    trained = fake_version(
        family,
        metrics=METRICS,
        params=PARAMS,
        manifest=MANIFEST,
        parent=shipped,
        snapshot=snapshot(),
        training_job=job,
        policy=rule,
        mlflow_run_id="run-abc",
    )
    trained.incidents.set([incident])
    versions.move_alias(family, CHAMPION, shipped, reason="the reference the edge client ships")
    versions.move_alias(family, CHALLENGER, trained, reason=f"training job {job.pk}")
    for n in range(2):
        make_device(f"lab-{n}")
    rollout = start_rollout(trained, phases=[0.5, 1.0], name="digits@2 to the lab", by=registry_operator)
    return {
        "family": family,
        "shipped": shipped,
        "trained": trained,
        "policy": rule,
        "job": job,
        "incident": incident,
        "rollout": rollout,
    }


def pages(world) -> dict[str, str]:
    return {
        "index": INDEX,
        "version": reverse("registry:version", args=[world["trained"].pk]),
        "aliases": reverse("registry:aliases", args=["digits"]),
        "jobs": JOBS,
        "job": reverse("registry:job", args=[world["job"].pk]),
        "rollouts": ROLLOUTS,
        "rollout": reverse("registry:rollout", args=[world["rollout"].pk]),
    }


PAGES = ["index", "version", "aliases", "jobs", "job", "rollouts", "rollout"]


# --- Access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("persona", ["as_operator", "as_viewer"])
def test_each_registry_page_opens_for_an_operator_and_a_viewer_with_its_live_script(request, world, persona, name):
    response = request.getfixturevalue(persona).get(pages(world)[name])
    assert response.status_code == 200, text(response)[:2000]
    page = text(response)
    assert 'href="/registry/">Registry</a>' in page  # the nav link
    assert "sphere/live.js" in page and "sphere/registry.js" in page
    assert re.search(r'data-live-events="[^"]*(training\.job|rollout\.updated|registry\.alias)', page)


@pytest.mark.parametrize("name", PAGES)
def test_an_anonymous_visitor_is_sent_to_sign_in(client, world, name):
    response = client.get(pages(world)[name])
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("persona", ["outsider", "operator"])  # signed in; the fleet operator is staff
def test_a_signed_in_user_without_registry_permissions_gets_403(request, world, persona, name):
    response = client_for(request.getfixturevalue(persona)).get(pages(world)[name])
    assert response.status_code == 403


@pytest.mark.parametrize("name", PAGES)
def test_a_device_token_opens_no_registry_page(client, world, device_a, name):
    response = client.get(pages(world)[name], **device_a.auth)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_pages_need_staff_like_the_live_feed(django_user_model, world):
    not_staff = staff_with(django_user_model, "nina", VIEW_ONLY)
    not_staff.is_staff = False
    not_staff.save()
    assert client_for(not_staff).get(INDEX).status_code == 403


def test_versions_alone_open_the_version_pages_but_not_jobs_rollouts_or_alias_history(django_user_model, world):
    versions_only = client_for(staff_with(django_user_model, "vic", ["view_modelversion"]))
    page = text(versions_only.get(pages(world)["version"]))
    assert "Rollouts of it" not in page and "Moves onto or off" not in page
    assert 'href="/registry/jobs/"' not in page  # no tab it could not open
    for name in ("aliases", "jobs", "job", "rollouts", "rollout"):
        assert versions_only.get(pages(world)[name]).status_code == 403, name


def test_the_live_registry_topic_is_open_to_those_who_may_see_versions():
    from sphere.consumers import TOPIC_PERMISSIONS

    assert TOPIC_PERMISSIONS["registry"] == "registry.view_modelversion"


def test_the_live_script_follows_the_registry_topic_and_moves_progress_in_place():
    script = (Path(settings.BASE_DIR) / "static" / "sphere" / "registry.js").read_text()
    assert 'window.sphereLive("registry"' in script
    assert '[data-field="progress"]' in script and "data-live-region" in script


# --- Families and versions --------------------------------------------------------------------


def test_the_index_shows_each_family_with_its_aliases_newest_version_and_live_rollout(as_operator, world):
    page = text(as_operator.get(INDEX))
    shipped, trained = world["shipped"], world["trained"]
    champion = (
        f'<a class="badge alias" href="/registry/versions/{shipped.pk}/" data-alias="digits-champion">digits@1</a>'
    )
    challenger = (
        f'<a class="badge alias" href="/registry/versions/{trained.pk}/" data-alias="digits-challenger">digits@2</a>'
    )
    assert champion in page and challenger in page
    assert f'href="/registry/rollouts/{world["rollout"].pk}/">rollout {world["rollout"].pk}</a>' in page
    assert reverse("admin:registry_modelfamily_change", args=[world["family"].pk]) in page
    assert reverse("registry:aliases", args=["digits"]) in page


def test_the_index_lists_versions_with_status_source_metrics_and_lineage_links(as_operator, world):
    response = as_operator.get(INDEX)
    trained, job, rule = world["trained"], world["job"], world["policy"]
    assert [version.label for version in response.context["page"]] == ["digits@2", "digits@1"]
    row = re.search(rf'<tr data-row="version-{trained.pk}">(.*?)</tr>', text(response), re.S).group(1)
    assert '<td class="num">0.950</td>' in row and '<td class="num">0.875</td>' in row  # held-out, drift set
    assert 'badge version-registered">Registered' in row and "<td>training</td>" in row
    assert '<span class="badge alias">challenger</span>' in row
    assert f'from <a href="/registry/versions/{world["shipped"].pk}/">digits@1</a>' in row
    assert reverse("admin:labeling_datasetsnapshot_change", args=[trained.snapshot_id]) in row
    assert f'<a href="/registry/jobs/{job.pk}/">job {job.pk}</a>' in row
    assert f'{reverse("admin:registry_retrainingpolicy_change", args=[rule.pk])}">digits on drift</a>' in row
    assert f'<a href="/drift/incidents/{world["incident"].pk}/">incident {world["incident"].pk}</a>' in row


def test_the_index_lists_the_versions_of_one_family_and_refuses_an_unknown_one(as_operator, world):
    assert as_operator.get(INDEX, {"family": "digits"}).status_code == 200
    assert as_operator.get(INDEX, {"family": "nonesuch"}).status_code == 404


def test_10000_versions_page_by_key_newest_first_at_the_same_cost_on_every_page(as_operator):
    bulk_versions(digits_family(), 10_000)
    with CaptureQueriesContext(connection) as first_queries:
        first = as_operator.get(INDEX)
    numbers = [version.number for version in first.context["page"]]
    assert numbers == list(range(10_000, 9_975, -1))
    older = first.context["page"].older
    assert f'href="?after={older}"' in text(first) and "« newest" not in text(first)

    second = as_operator.get(INDEX, {"after": older})
    assert [version.number for version in second.context["page"]][:2] == [9_975, 9_974]
    back = as_operator.get(INDEX, {"before": second.context["page"].newer})
    assert [version.number for version in back.context["page"]] == numbers

    last_key = digits_family().versions.get(number=3).pk
    with CaptureQueriesContext(connection) as deep_queries:
        deep = as_operator.get(INDEX, {"after": last_key})
    assert [version.number for version in deep.context["page"]] == [2, 1]
    assert deep.context["page"].older is None and "older →" not in text(deep)
    assert len(deep_queries) == len(first_queries)
    assert not any("COUNT(" in query["sql"].upper() for query in [*first_queries, *deep_queries])


# Session, user, the user's and groups' permissions; the families with aliases (2); the page of
# versions, their aliases, their incidents.
INDEX_QUERIES = 9


def test_the_index_costs_a_fixed_number_of_queries_however_many_versions(
    as_operator, world, django_assert_max_num_queries
):
    bulk_versions(digits_family(), 200, start=3)
    with django_assert_max_num_queries(INDEX_QUERIES):
        response = as_operator.get(INDEX, {"after": world["trained"].pk + 150})
    assert len(response.context["page"]) == 25


def test_the_version_page_shows_the_bundle_manifest_lineage_and_admin_link(as_operator, world):
    trained = world["trained"]
    page = text(as_operator.get(reverse("registry:version", args=[trained.pk])))
    assert f"<code>{trained.bundle_sha256}</code>" in page and "(1002 bytes)" in page
    assert f"<code>/api/v1/device/bundles/{trained.pk}</code>" in page
    assert "<dt>trained_by_job</dt><dd>1</dd>" in page and "<dt>classes</dt><dd>2: 3, 7</dd>" in page
    assert "<td>knn.npz</td>" in page
    assert reverse("admin:registry_modelversion_change", args=[trained.pk]) in page
    assert f'<a href="/registry/jobs/{world["job"].pk}/">job {world["job"].pk}</a>' in page
    assert "Population incident" in page and "<code>run-abc</code>" in page
    assert "<dt>n_components</dt><dd><code>16</code></dd>" in page
    assert "<dt>train_counts</dt><dd><code>{&quot;3&quot;: 40, &quot;7&quot;: 44}</code></dd>" in page


def test_the_version_page_compares_the_candidate_with_its_champion_and_shows_the_difference(as_operator, world):
    response = as_operator.get(reverse("registry:version", args=[world["trained"].pk]))
    rows = {row["name"]: row for row in response.context["metrics"]}
    assert (rows["Held-out set"]["candidate_text"], rows["Held-out set"]["champion_text"]) == ("0.950", "0.900")
    assert rows["Held-out set"]["difference_text"] == "+0.050" and rows["Held-out set"]["tone"] == "better"
    assert rows["Drift set"]["difference_text"] == "+0.375" and rows["Drift set"]["samples"] == 40
    assert rows["class 3"]["difference_text"] == "-0.050" and rows["class 3"]["tone"] == "worse"
    assert rows["Shipped test set"]["tone"] == "same"
    page = text(response)
    assert '<td class="num worse">-0.050</td>' in page
    assert '<svg class="registry-comparison"' in page and page.count("<rect") >= 12


def test_a_version_without_an_evaluation_says_so(as_operator, world):
    page = text(as_operator.get(reverse("registry:version", args=[world["shipped"].pk])))
    assert "No evaluation recorded: shipped." in page


def test_the_version_page_lists_its_alias_moves_and_rollouts(as_operator, world):
    trained, rollout = world["trained"], world["rollout"]
    page = text(as_operator.get(reverse("registry:version", args=[trained.pk])))
    assert "nowhere → <strong>digits@2</strong>" in page and f"training job {world['job'].pk}" in page
    assert f'<a href="/registry/rollouts/{rollout.pk}/">digits@2 to the lab</a>' in page
    assert '<span class="badge rollout-running">Running</span>' in page


def test_the_bundle_download_is_offered_to_whom_the_files_view_serves_and_is_the_bundle(as_operator, as_viewer):
    version = real_version()
    url = reverse("stored-file", args=["artifacts", version.bundle_key])
    page = reverse("registry:version", args=[version.pk])
    assert f'<a href="{url}" download>' in text(as_operator.get(page))
    download = as_operator.get(url)
    assert download.status_code == 200
    import hashlib

    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == version.bundle_sha256
    assert url in text(as_viewer.get(page))  # bundles open to whoever may see model versions
    assert as_viewer.get(url).status_code == 200


def test_a_missing_version_job_or_rollout_is_a_404(as_operator):
    for name in ("registry:version", "registry:job", "registry:rollout"):
        assert as_operator.get(reverse(name, args=[999_999])).status_code == 404, name
    assert as_operator.get(reverse("registry:aliases", args=["nonesuch"])).status_code == 404


# Session, user, permissions (2), the version with its relations, its aliases, incidents,
# children, alias moves, rollouts.
VERSION_QUERIES = 10


def test_the_version_page_costs_a_fixed_number_of_queries(as_operator, world, django_assert_max_num_queries):
    for n in range(30):
        fake_version(parent=world["trained"])
    with django_assert_max_num_queries(VERSION_QUERIES):
        response = as_operator.get(reverse("registry:version", args=[world["trained"].pk]))
    assert len(response.context["lineage"]["children"]) == 20


# --- Aliases ----------------------------------------------------------------------------------


def moved_at(event: AliasEvent, when) -> None:
    AliasEvent.objects.filter(pk=event.pk).update(at=when)


@pytest.fixture
def history(world):
    """champion: v1 from 10:00, v3 from 12:00; challenger: v2 from 11:00, removed at 12:00."""
    family, shipped, trained = world["family"], world["shipped"], world["trained"]
    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    AliasEvent.objects.all().delete()
    from registry.models import Alias

    Alias.objects.all().delete()
    third = fake_version(family)
    moves = [
        (versions.move_alias(family, CHAMPION, shipped, reason="first"), 10),
        (versions.move_alias(family, CHALLENGER, trained, reason="won"), 11),
        (versions.move_alias(family, CHAMPION, third, reason="rolled out"), 12),
        (versions.move_alias(family, CHALLENGER, None, reason="promoted"), 12),
    ]
    for event, hour in moves:
        moved_at(event, day + timedelta(hours=hour))
    return {"day": day, "third": third, **world}


def test_the_alias_page_lists_every_move_newest_first_with_who_and_why(as_operator, history):
    response = as_operator.get(reverse("registry:aliases", args=["digits"]))
    moves = [(event.alias, event.version.label if event.version else None) for event in response.context["page"]]
    assert moves == [
        ("challenger", None),
        ("champion", "digits@3"),
        ("challenger", "digits@2"),
        ("champion", "digits@1"),
    ]
    page = text(response)
    assert "<strong>removed</strong>" in page and "rolled out" in page
    assert reverse("admin:registry_aliasevent_changelist") in page


def test_the_alias_page_says_which_version_each_alias_was_at_a_time(as_operator, history):
    url = reverse("registry:aliases", args=["digits"])
    day = history["day"]
    at = lambda hour, minute=0: (day + timedelta(hours=hour, minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731

    def answer(**query):
        found = as_operator.get(url, query).context["answer"]
        return [(name, version.label if version else None) for name, version in found["rows"]]

    assert answer(at=at(11, 30)) == [("challenger", "digits@2"), ("champion", "digits@1")]
    assert answer(at=at(12, 30)) == [("champion", "digits@3")]  # the challenger was removed
    assert answer(at=at(11, 30), alias="champion") == [("champion", "digits@1")]
    assert answer(at=at(9), alias="champion") == [("champion", None)]
    page = text(as_operator.get(url, {"at": at(11, 30), "alias": "champion"}))
    assert f'<strong>champion</strong> was <a href="/registry/versions/{history["shipped"].pk}/">digits@1</a>' in page
    filtered = as_operator.get(url, {"alias": "challenger"}).context["page"]
    assert {event.alias for event in filtered} == {"challenger"}


def test_a_bad_time_is_refused_naming_the_field(as_operator, history):
    response = as_operator.get(reverse("registry:aliases", args=["digits"]), {"at": "yesterday-ish"})
    assert response.context["answer"] is None
    assert "at: Enter a valid date/time." in text(response)


def test_the_alias_history_pages_at_a_fixed_cost(as_operator, world, django_assert_max_num_queries):
    family, shipped, trained = world["family"], world["shipped"], world["trained"]
    for n in range(60):
        versions.move_alias(family, "canary", trained if n % 2 else shipped)
    url = reverse("registry:aliases", args=["digits"])
    # Session, user, permissions (2), family, alias names, current aliases, capped count, page.
    with django_assert_max_num_queries(9):
        response = as_operator.get(url)
    assert len(response.context["page"]) == 50 and 'href="?page=2"' in text(response)
    assert len(as_operator.get(url, {"page": 2}).context["page"]) == 12


# --- Training jobs and policies ---------------------------------------------------------------


def test_the_jobs_page_shows_each_job_with_its_progress_stage_and_version(as_operator, world):
    running = TrainingJob.objects.create(
        family=world["family"], trigger="schedule", status=JobStatus.RUNNING, progress=0.42, stage="search"
    )
    page = text(as_operator.get(JOBS))
    row = re.search(rf'<tr data-row="job-{running.pk}"(.*?)</tr>', page, re.S).group(1)
    assert f'data-job="{running.pk}" data-status="running"' in row
    assert (
        '<progress max="100" value="42" data-field="progress"' in row and '<span data-field="percent">42%</span>' in row
    )
    assert '<div class="meta" data-field="stage">search</div>' in row
    done = re.search(rf'<tr data-row="job-{world["job"].pk}"(.*?)</tr>', page, re.S).group(1)
    assert f'<a href="/registry/versions/{world["trained"].pk}/">digits@2</a>' in done
    assert "Promoted to challenger" in done and "gain 0.050" in done
    assert 'data-live-events="training.job"' in page and 'data-live-region="jobs"' in page


def test_the_jobs_page_filters_by_status(as_operator, world):
    failed = TrainingJob.objects.create(family=world["family"], trigger="manual", status=JobStatus.FAILED)
    queued = TrainingJob.objects.create(family=world["family"], trigger="manual")
    shown = lambda query: {job.pk for job in as_operator.get(JOBS, query).context["page"]}  # noqa: E731
    assert shown({}) == {world["job"].pk, failed.pk, queued.pk}
    assert shown({"status": "failed"}) == {failed.pk}
    assert shown({"status": "active"}) == {queued.pk}
    assert shown({"status": "bogus"}) == shown({})


def test_the_jobs_page_shows_each_policys_breaker_cooldown_and_last_job(as_operator, world):
    now = timezone.now()
    broken = policy(world["family"], name="broken", consecutive_failures=3, breaker_open_until=now + timedelta(hours=2))
    cooling = policy(world["family"], name="cooling", last_job_at=now - timedelta(minutes=10), cooldown_minutes=60)
    busy = policy(world["family"], name="busy")
    busy_job = TrainingJob.objects.create(family=world["family"], policy=busy, trigger="manual")
    response = as_operator.get(JOBS)
    states = {rule.name: rule.state["state"] for rule in response.context["policies"]}
    assert {name: state for name, state in states.items() if name != "digits default"} == {
        "broken": "breaker open",
        "busy": f"job {busy_job.pk} queued",
        "cooling": "cooling down",
        "digits on drift": "ready",
    }
    page = text(response)
    row = re.search(rf'<tr data-row="policy-{broken.pk}">(.*?)</tr>', page, re.S).group(1)
    assert "open until" in row and "3 of 3 failures in a row" in row
    row = re.search(rf'<tr data-row="policy-{cooling.pk}">(.*?)</tr>', page, re.S).group(1)
    assert "until " + timezone.localtime(cooling.last_job_at + timedelta(minutes=60)).strftime("%Y-%m-%d %H:%M") in row
    assert f'<a href="/registry/jobs/{world["job"].pk}/">job {world["job"].pk}</a>' in page


def test_running_a_policy_now_queues_a_job_by_the_operator(as_operator, registry_operator, world):
    rule = world["policy"]
    response = as_operator.post(
        reverse("registry:run-policy", args=[rule.pk]), {"reason": "new labels are in", "next": JOBS}, follow=True
    )
    job = TrainingJob.objects.get(policy=rule, status=JobStatus.QUEUED)
    assert (job.trigger, job.requested_by, job.evidence["reason"]) == ("manual", registry_operator, "new labels are in")
    assert messages_of(response) == [f"Job {job.pk} of digits on drift is queued."]
    assert f'data-row="job-{job.pk}"' in text(response)


def test_running_a_busy_policy_shows_why_it_cannot_start(as_operator, world):
    rule = world["policy"]
    url = reverse("registry:run-policy", args=[rule.pk])
    as_operator.post(url, follow=True)
    response = as_operator.post(url, follow=True)
    queued = TrainingJob.objects.get(policy=rule, status=JobStatus.QUEUED)
    assert messages_of(response) == [f"Not started: digits on drift: job {queued.pk} is queued"]
    assert TrainingJob.objects.filter(policy=rule).count() == 2  # the promoted one and the queued one


def test_a_policy_with_an_open_breaker_is_not_run_and_the_page_says_until_when(as_operator, world):
    rule = world["policy"]
    rule.breaker_open_until, rule.consecutive_failures = timezone.now() + timedelta(hours=1), 3
    rule.save()
    response = as_operator.post(reverse("registry:run-policy", args=[rule.pk]), follow=True)
    assert messages_of(response)[0].startswith("Not started: digits on drift: circuit breaker open until")
    assert not TrainingJob.objects.filter(policy=rule, status=JobStatus.QUEUED).exists()


def test_a_viewer_sees_no_run_button_and_cannot_run_a_policy(as_viewer, world):
    assert "Run now" not in text(as_viewer.get(JOBS))
    assert as_viewer.post(reverse("registry:run-policy", args=[world["policy"].pk])).status_code == 403
    assert not TrainingJob.objects.filter(status=JobStatus.QUEUED).exists()


def test_run_now_needs_a_post_and_its_csrf_token(registry_operator, world):
    url = reverse("registry:run-policy", args=[world["policy"].pk])
    browser = client_for(registry_operator, enforce_csrf_checks=True)
    assert browser.get(url).status_code == 405
    assert browser.post(url).status_code == 403
    assert not TrainingJob.objects.filter(status=JobStatus.QUEUED).exists()
    token = csrf_token(text(browser.get(JOBS)))
    assert browser.post(url, {"csrfmiddlewaretoken": token}).status_code == 302
    assert TrainingJob.objects.filter(status=JobStatus.QUEUED).count() == 1


def test_run_now_never_redirects_to_another_site(as_operator, world):
    response = as_operator.post(
        reverse("registry:run-policy", args=[world["policy"].pk]), {"next": "https://evil.example/"}
    )
    assert response["Location"] == JOBS


def test_the_job_page_shows_its_evaluation_evidence_and_lineage(as_operator, world):
    job = world["job"]
    response = as_operator.get(reverse("registry:job", args=[job.pk]))
    page = text(response)
    assert "gain 0.050 &gt;= margin 0.010" in page
    assert f'Produced <a href="/registry/versions/{world["trained"].pk}/"><strong>digits@2</strong></a>' in page
    assert "3 drift event(s) confirmed; 60 new labels" in page  # why it ran
    assert [row["difference_text"] for row in response.context["metrics"]][:2] == ["+0.050", "+0.375"]
    assert f'data-live-id="{job.pk}"' in page and f'data-job="{job.pk}" data-status="promoted"' in page
    assert reverse("admin:registry_trainingjob_change", args=[job.pk]) in page


# Session, user, permissions (2), the capped count, the page with families, policies and
# versions, the policies with their newest job.
JOBS_QUERIES = 7


def test_the_jobs_page_costs_a_fixed_number_of_queries_however_many_jobs(
    as_operator, world, django_assert_max_num_queries
):
    for n in range(60):
        TrainingJob.objects.create(family=world["family"], trigger="schedule", status=JobStatus.FAILED, error=f"#{n}")
    for n in range(5):
        policy(world["family"], name=f"extra {n}")
    with django_assert_max_num_queries(JOBS_QUERIES):
        response = as_operator.get(JOBS)
    assert len(response.context["page"]) == 25 and len(response.context["policies"]) == RetrainingPolicy.objects.count()


# --- Rollouts ---------------------------------------------------------------------------------


@pytest.fixture
def canary(db):
    """A canary that passed its first phase on real evidence: 2 of 20 devices on the new version,
    predictions on both sides, then a tick that judged the gates and advanced."""
    old = bundled_version()
    versions.move_alias(old.family, CHAMPION, old)
    devices = fleet(20)
    rollout = start_rollout(bundled_version(), phases=[0.1, 0.5, 1.0], gates=GATES, name="canary")
    install(devices)
    assert tick(rollout, observe_phase(rollout)) == "advanced"
    return rollout


def test_the_rollout_list_shows_status_phase_device_counts_and_last_decision(as_operator, world):
    rollout = world["rollout"]
    response = as_operator.get(ROLLOUTS)
    row = re.search(rf'<tr data-row="rollout-{rollout.pk}">(.*?)</tr>', text(response), re.S).group(1)
    assert '<span class="badge rollout-running" data-field="status">Running</span>' in row
    assert "<td>1 of 2</td>" in row and "assigned 1" in row
    assert '<svg class="registry-states"' in row and "<title>Assigned: 1</title>" in row
    assert "<strong>assign</strong>" in row


def test_the_rollout_list_filters_by_status(as_operator, world):
    assert [r.pk for r in as_operator.get(ROLLOUTS, {"status": "live"}).context["page"]] == [world["rollout"].pk]
    assert list(as_operator.get(ROLLOUTS, {"status": "completed"}).context["page"]) == []


def test_the_rollout_page_shows_devices_per_phase_and_state(as_operator, canary):
    response = as_operator.get(reverse("registry:rollout", args=[canary.pk]))
    phases = response.context["phases"]
    counts = [{state: n for state, _, n in phase["counts"]} for phase in phases]
    assert counts == [{"active": 2}, {"assigned": 8}, {}]
    assert [phase["devices"] for phase in phases] == [2, 8, 0]
    assert [phase["current"] for phase in phases] == [False, True, False]
    page = text(response)
    assert '<span data-count="phase-0-active">active 2</span>' in page
    assert '<span data-count="all-assigned">assigned 8</span> · <span data-count="all-active">active 2</span>' in page
    assert page.count('<svg class="registry-states"') == 4  # three phases and the total
    assert f"?rollout__id__exact={canary.pk}" in page


def test_the_rollout_page_shows_the_gate_numbers_compared_and_their_thresholds(as_operator, canary):
    response = as_operator.get(reverse("registry:rollout", args=[canary.pk]))
    assert response.context["judged"].action == "advance"
    rows = {row["name"]: row for row in response.context["gate_rows"]}
    assert rows["Install success"]["canary"] == "100% (2 active, 0 failed)"
    assert (rows["Install success"]["threshold"], rows["Install success"]["outcome"]) == ("≥ 90%", "pass")
    assert rows["Predictions"]["canary"] == "42" and rows["Predictions"]["threshold"] == "≥ 20 each"
    confidence = rows["Mean confidence"]
    assert (confidence["canary"], confidence["control"], confidence["outcome"]) == ("0.900", "0.900", "pass")
    assert confidence["threshold"] == "≥ 0.850 (control − 0.05)"
    assert rows["Mean latency"]["threshold"] == "≤ 15.0 ms (control × 1.5)"
    assert rows["Drift events"]["canary"].startswith("0 (0/device-h over")
    assert rows["Drift events"]["threshold"] == "≤ 3 events (control rate × 2 + 3)"
    page = text(response)
    assert '<span class="badge gate-pass">pass</span>' in page
    assert "Phase 2 of 3 (50% of the target)." in page  # the decision trail


def test_a_failed_gate_shows_as_failed_with_the_numbers(as_operator, db):
    old = bundled_version()
    versions.move_alias(old.family, CHAMPION, old)
    devices = fleet(20)
    rollout = start_rollout(bundled_version(), phases=[0.1, 0.5, 1.0], gates=GATES)
    install(devices)
    assert tick(rollout, observe_phase(rollout, canary_confidence=0.6)) == "halted"
    response = as_operator.get(reverse("registry:rollout", args=[rollout.pk]))
    rows = {row["name"]: row for row in response.context["gate_rows"]}
    assert response.context["judged"].action == "halt"
    assert (rows["Mean confidence"]["canary"], rows["Mean confidence"]["outcome"]) == ("0.600", "fail")
    assert rows["Mean latency"]["outcome"] == "pass"
    assert "Mean confidence 0.600 under 0.850" in text(response)


@pytest.mark.parametrize(
    "start, verb, status, decision, why",
    [
        ({"require_approval": True}, "approve", RolloutStatus.RUNNING, "approve", "Approved."),
        ({}, "pause", RolloutStatus.PAUSED, "pause", "from the page"),
        ({}, "cancel", RolloutStatus.CANCELLED, "cancel", "from the page"),
        ({}, "rollback", RolloutStatus.HALTED, "rollback", "from the page"),
    ],
)
def test_an_operator_steers_a_rollout_through_the_service_and_is_recorded(
    as_operator, registry_operator, world, start, verb, status, decision, why
):
    Rollout.objects.all().delete()
    rollout = start_rollout(world["trained"], **start)
    response = as_operator.post(
        reverse("registry:rollout-act", args=[rollout.pk]), {"action": verb, "reason": "from the page"}, follow=True
    )
    rollout.refresh_from_db()
    assert rollout.status == status
    made = rollout.decisions.get(action=decision)
    assert (made.by, made.automatic, made.reason) == (registry_operator, False, why)
    assert messages_of(response)[0].endswith(f"it is now {rollout.get_status_display().lower()}.")
    assert f'data-decision="{decision}"' in text(response)


def test_a_paused_rollout_resumes(as_operator, world):
    rollout = world["rollout"]
    url = reverse("registry:rollout-act", args=[rollout.pk])
    as_operator.post(url, {"action": "pause"})
    page = text(as_operator.get(reverse("registry:rollout", args=[rollout.pk])))
    assert 'value="resume"' in page and 'value="pause"' not in page and 'value="approve"' not in page
    as_operator.post(url, {"action": "resume"})
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING


def test_advancing_without_passing_gates_is_refused_with_the_reason_unless_forced(as_operator, world):
    rollout = world["rollout"]
    url = reverse("registry:rollout-act", args=[rollout.pk])
    refused = as_operator.post(url, {"action": "advance"}, follow=True)
    rollout.refresh_from_db()
    assert rollout.phase == 0
    assert messages_of(refused)[0].startswith("Nothing done: The gates do not pass (Observing the phase.)")
    as_operator.post(url, {"action": "advance", "force": "1"})
    rollout.refresh_from_db()
    assert rollout.phase == 1 and rollout.decisions.filter(action="advance").get().evidence["gates"]["forced"]


def test_an_action_the_rollouts_state_does_not_allow_is_refused_with_the_reason(as_operator, world):
    rollout = world["rollout"]
    response = as_operator.post(reverse("registry:rollout-act", args=[rollout.pk]), {"action": "approve"}, follow=True)
    assert messages_of(response) == [
        "Nothing done: Cannot approve digits@2 to the lab: it is running (needs: awaiting approval)."
    ]
    bogus = as_operator.post(reverse("registry:rollout-act", args=[rollout.pk]), {"action": "explode"}, follow=True)
    assert messages_of(bogus)[0].startswith("Nothing done: action: Select a valid choice.")
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING


def test_a_viewer_sees_no_rollout_buttons_and_cannot_steer(as_viewer, world):
    rollout = world["rollout"]
    assert 'name="action"' not in text(as_viewer.get(reverse("registry:rollout", args=[rollout.pk])))
    assert as_viewer.post(reverse("registry:rollout-act", args=[rollout.pk]), {"action": "pause"}).status_code == 403
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING


def test_steering_needs_a_post_and_its_csrf_token(registry_operator, world):
    rollout = world["rollout"]
    url = reverse("registry:rollout-act", args=[rollout.pk])
    browser = client_for(registry_operator, enforce_csrf_checks=True)
    assert browser.get(url).status_code == 405
    assert browser.post(url, {"action": "pause"}).status_code == 403
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    token = csrf_token(text(browser.get(reverse("registry:rollout", args=[rollout.pk]))))
    assert browser.post(url, {"action": "pause", "csrfmiddlewaretoken": token}).status_code == 302
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED


def test_a_decision_made_on_the_page_is_published_live(as_operator, world, django_capture_on_commit_callbacks):
    rollout = world["rollout"]
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        as_operator.post(reverse("registry:rollout-act", args=[rollout.pk]), {"action": "pause"})
    [(topic, event, data)] = [call.args for call in send.call_args_list if call.args[1] == "rollout.updated"]
    payload = data()
    assert (topic, payload["id"], payload["status"], payload["action"]) == ("registry", rollout.pk, "paused", "pause")
    assert payload["last_decision"]["action"] == "pause"


def test_a_jobs_progress_goes_out_on_the_topic_the_jobs_page_follows(world, django_capture_on_commit_callbacks):
    job = TrainingJob.objects.create(family=world["family"], trigger="manual", status=JobStatus.RUNNING)
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        jobs.progress(job, 0.42, "search")
    [(topic, event, data)] = [call.args for call in send.call_args_list]
    assert (topic, event, data["id"], data["progress"], data["stage"]) == (
        "registry",
        "training.job",
        job.pk,
        0.42,
        "search",
    )


# Session, user, permissions (2), the rollout, its counts and last decision (rollout_summary),
# the latest judged decision, the capped count and page of decisions, the target.
ROLLOUT_QUERIES = 10


def test_the_rollout_page_costs_a_fixed_number_of_queries_however_many_decisions(
    as_operator, canary, django_assert_max_num_queries
):
    for n in range(40):
        canary.decisions.create(action="hold", phase=1, reason=f"hold {n}", evidence={"n": n})
    with django_assert_max_num_queries(ROLLOUT_QUERIES):
        response = as_operator.get(reverse("registry:rollout", args=[canary.pk]))
    assert len(response.context["page"]) == 25


def test_the_rollout_list_costs_the_same_for_one_or_five_rollouts(as_operator, world):
    def listed():
        with CaptureQueriesContext(connection) as queries:
            response = as_operator.get(ROLLOUTS)
        return len(response.context["page"]), len(queries)

    one = listed()
    for _ in range(4):
        Rollout.objects.filter(status__in=["approval", "running", "paused"]).update(status="completed")
        start_rollout(fake_version())
    five = listed()
    assert (one[0], five[0]) == (1, 5) and one[1] == five[1]
