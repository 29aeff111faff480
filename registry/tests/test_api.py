"""The registry's operator API: families and aliases (with history and "as of"), versions with
lineage and keyset pagination at 10,000 rows, policies run by hand, jobs, rollouts started and
steered. Staff sessions with model permissions only: devices, outsiders and anonymous callers
are refused, and a viewer cannot change anything."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from conftest import make_device
from devices.models import DeviceGroup
from drift.models import Incident
from edge_client.knn import KNN
from labeling.tests.factories import DIGITS
from registry import versions
from registry.bundles import build_bundle
from registry.models import (
    CHALLENGER,
    CHAMPION,
    AliasEvent,
    JobStatus,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutStatus,
    TrainingJob,
    VersionStatus,
)
from registry.tests.factories import digits_family, policy

pytestmark = pytest.mark.django_db

BASE = "/api/v1/registry"
ALL_REGISTRY = [
    "view_modelfamily",
    "view_modelversion",
    "change_modelversion",
    "view_alias",
    "view_aliasevent",
    "view_retrainingpolicy",
    "change_retrainingpolicy",
    "view_trainingjob",
    "change_trainingjob",
    "view_rollout",
    "add_rollout",
    "change_rollout",
]
VIEW_ONLY = [name for name in ALL_REGISTRY if name.startswith("view_")]


# --- builders (shared with the other registry API, admin and command tests) ---------------------


def staff_with(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, is_staff=True)  # no password: hashing is slow, force_login
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="registry", codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # fresh: no permission cache


def logged_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def fake_version(family=None, number=None, **fields) -> ModelVersion:
    """A version row without a stored bundle: enough for lists, aliases and rollouts."""
    family = family or digits_family()
    number = number or versions.next_number(family)
    defaults = {
        "bundle_key": f"models/{family.name}/fake-{number}.tar.gz",
        "bundle_sha256": f"{number:064x}",
        "bundle_size": 1000 + number,
        "classes": DIGITS,
        "feature_dim": 4,
    }
    return ModelVersion.objects.create(family=family, number=number, **{**defaults, **fields})


def bulk_versions(family, count: int, start: int = 1) -> None:
    rows = [
        ModelVersion(
            family=family,
            number=n,
            bundle_key=f"models/{family.name}/fake-{n}.tar.gz",
            bundle_sha256=f"{n:064x}",
            bundle_size=1000,
            classes=DIGITS,
            feature_dim=4,
            metrics={"candidate": {"holdout_accuracy": 0.9, "drift_samples": 0}},
        )
        for n in range(start, start + count)
    ]
    ModelVersion.objects.bulk_create(rows, batch_size=2000)


def real_version(family=None, seed: int = 0) -> ModelVersion:
    """A version with a real (tiny) bundle in the artifacts storage."""
    family = family or digits_family()
    number = versions.next_number(family)
    rng = np.random.default_rng(seed)
    knn = KNN(k=3, max_size=30).fit(rng.normal(size=(30, 4)), np.arange(30) % 10)
    built = build_bundle(label=f"{family.name}@{number}", classes=DIGITS, transform=None, knn=knn, feature_dim=4)
    return versions.register_version(family, built, feature_dim=4, number=number)


@pytest.fixture
def registry_admin(django_user_model):
    """Staff holding every registry permission this API checks."""
    return staff_with(django_user_model, "rhea", *ALL_REGISTRY)


@pytest.fixture
def viewer(django_user_model):
    """Staff who may read the registry but change nothing."""
    return staff_with(django_user_model, "vera", *VIEW_ONLY)


@pytest.fixture
def admin_api(registry_admin):
    return logged_in(registry_admin)


@pytest.fixture
def viewer_api(viewer):
    return logged_in(viewer)


def ok(response, code=200):
    assert response.status_code == code, response.content[:2000]
    return response.json()


# --- who may call ---------------------------------------------------------------------------------

READS = [
    f"{BASE}/families/",
    f"{BASE}/families/digits/",
    f"{BASE}/families/digits/aliases/",
    f"{BASE}/families/digits/alias-history/",
    f"{BASE}/versions/",
    f"{BASE}/policies/",
    f"{BASE}/jobs/",
    f"{BASE}/rollouts/",
]


def test_anonymous_callers_outsiders_devices_and_fleet_only_operators_cannot_read(
    api, outsider_api, operator_api, device_a
):
    device = APIClient()
    device.credentials(HTTP_AUTHORIZATION=f"Bearer {device_a.token}")
    for url in READS:
        assert api.get(url).status_code in (401, 403), url
        assert outsider_api.get(url).status_code == 403, url
        assert operator_api.get(url).status_code == 403, url  # staff, but no registry permission
        assert device.get(url).status_code == 403, url
    assert device.post(f"{BASE}/rollouts/", {"version": 1}, format="json").status_code == 403


def test_a_viewer_reads_but_cannot_move_aliases_run_policies_or_steer_rollouts(viewer_api):
    family = digits_family()
    version = fake_version(family)
    rule = policy(family, name="nightly")
    assert ok(viewer_api.get(f"{BASE}/families/digits/aliases/"))["aliases"] == []

    moved = viewer_api.post(f"{BASE}/families/digits/aliases/", {"alias": "champion", "version": 1}, format="json")
    ran = viewer_api.post(f"{BASE}/policies/{rule.pk}/run/", {}, format="json")
    paused = viewer_api.post(f"{BASE}/policies/{rule.pk}/pause/")
    started = viewer_api.post(f"{BASE}/rollouts/", {"version": version.pk}, format="json")

    assert [r.status_code for r in (moved, ran, paused, started)] == [403, 403, 403, 403], moved.content
    assert not AliasEvent.objects.exists() and not TrainingJob.objects.exists() and not Rollout.objects.exists()
    assert RetrainingPolicy.objects.get(pk=rule.pk).enabled


def test_rows_are_not_edited_or_deleted_through_the_api(admin_api):
    version = fake_version()
    rule = policy(name="nightly")
    # Model permissions are checked first: without delete/change rights that is a 403, else a 405.
    assert admin_api.delete(f"{BASE}/versions/{version.pk}/").status_code in (403, 405)
    assert admin_api.patch(f"{BASE}/policies/{rule.pk}/", {"enabled": False}, format="json").status_code == 405
    assert admin_api.get(f"{BASE}/policies/{rule.pk}/run/").status_code == 405
    assert ModelVersion.objects.filter(pk=version.pk).exists() and RetrainingPolicy.objects.get(pk=rule.pk).enabled


# --- families and aliases -------------------------------------------------------------------------


def test_families_list_their_class_set_latest_version_and_aliases(admin_api):
    family = digits_family()
    first, second = fake_version(family), fake_version(family)
    versions.move_alias(family, CHAMPION, first)
    versions.move_alias(family, CHALLENGER, second)

    listed = ok(admin_api.get(f"{BASE}/families/"))["results"]
    detail = ok(admin_api.get(f"{BASE}/families/digits/"))

    assert [f["name"] for f in listed] == ["digits"]
    assert detail["aliases"] == {"champion": "digits@1", "challenger": "digits@2"}
    assert detail["latest_number"] == 2 and detail["classes"] == DIGITS
    assert admin_api.get(f"{BASE}/families/nope/").status_code == 404


def test_an_alias_is_moved_by_number_label_or_alias_and_the_move_is_recorded(admin_api, registry_admin):
    family = digits_family()
    fake_version(family), fake_version(family)
    url = f"{BASE}/families/digits/aliases/"

    first = ok(admin_api.post(url, {"alias": "champion", "version": 1, "reason": "shipped"}, format="json"))
    ok(admin_api.post(url, {"alias": "challenger", "version": "digits@2"}, format="json"))
    promoted = ok(admin_api.post(url, {"alias": "champion", "version": "challenger"}, format="json"))
    again = ok(admin_api.post(url, {"alias": "champion", "version": 2}, format="json"))

    assert first["moved"] and first["event"]["version"] == "digits@1" and first["event"]["by"] == "rhea"
    assert promoted["event"]["previous"] == "digits@1" and promoted["event"]["version"] == "digits@2"
    assert again["moved"] is False and again["event"] is None
    assert {row["alias"]: row["version"] for row in again["aliases"]} == {
        "champion": "digits@2",
        "challenger": "digits@2",
    }
    event = AliasEvent.objects.filter(alias="champion").first()
    assert event.by == registry_admin and event.version.number == 2


def test_an_alias_is_removed_with_null(admin_api):
    family = digits_family()
    versions.move_alias(family, CHALLENGER, fake_version(family))
    removed = ok(
        admin_api.post(f"{BASE}/families/digits/aliases/", {"alias": "challenger", "version": None}, format="json")
    )
    assert removed["moved"] and removed["event"]["version"] is None and removed["aliases"] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"alias": "champion", "version": 99}, "version"),
        ({"alias": "champion", "version": "other@1"}, "version"),
        ({"alias": "champion", "version": True}, "version"),
        ({"alias": "Champion!", "version": 1}, "alias"),
        ({"alias": "champion"}, "version"),
    ],
)
def test_a_bad_alias_move_is_a_400_naming_the_field(admin_api, body, field):
    fake_version()
    response = admin_api.post(f"{BASE}/families/digits/aliases/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not AliasEvent.objects.exists()


def test_an_archived_version_cannot_take_an_alias_409_with_the_reason(admin_api):
    version = fake_version(status=VersionStatus.ARCHIVED)
    response = admin_api.post(
        f"{BASE}/families/digits/aliases/", {"alias": "champion", "version": version.number}, format="json"
    )
    assert response.status_code == 409 and "archived" in response.json()["detail"]


def test_alias_history_lists_moves_and_answers_which_version_it_was_at_a_time(admin_api):
    family = digits_family()
    one, two = fake_version(family), fake_version(family)
    start = timezone.now() - timedelta(hours=3)
    for at, alias, version in [(start, CHAMPION, one), (start + timedelta(hours=1), CHAMPION, two)]:
        event = versions.move_alias(family, alias, version)
        AliasEvent.objects.filter(pk=event.pk).update(at=at)
    versions.move_alias(family, CHALLENGER, one)
    url = f"{BASE}/families/digits/alias-history/"

    history = ok(admin_api.get(url, {"alias": "champion"}))["results"]
    between = ok(admin_api.get(url, {"alias": "champion", "at": (start + timedelta(minutes=30)).isoformat()}))
    before = ok(admin_api.get(url, {"alias": "champion", "at": (start - timedelta(minutes=1)).isoformat()}))
    naive = ok(admin_api.get(url, {"at": (start + timedelta(hours=2)).replace(tzinfo=None).isoformat()}))
    bad = admin_api.get(url, {"at": "yesterday"})

    assert [(e["version"], e["previous"]) for e in history] == [("digits@2", "digits@1"), ("digits@1", None)]
    assert between["version"] == "digits@1" and between["version_id"] == one.pk
    assert before["version"] is None
    assert naive["aliases"] == {"champion": "digits@2"}  # the challenger came later
    assert bad.status_code == 400 and "at" in bad.json()


# --- versions ---------------------------------------------------------------------------------


def test_a_version_is_read_by_id_or_label_with_its_lineage(admin_api):
    family = digits_family()
    parent = fake_version(family)
    rule = policy(family, name="nightly")
    job = TrainingJob.objects.create(family=family, policy=rule, trigger="manual", status=JobStatus.PROMOTED)
    now = timezone.now()
    incident = Incident.objects.create(
        kind="cohort", started_at=now, ended_at=now, device_count=3, event_count=5, evidence={}
    )
    child = fake_version(family, parent=parent, training_job=job, policy=rule, mlflow_run_id="run-1")
    child.incidents.set([incident])

    by_id = ok(admin_api.get(f"{BASE}/versions/{child.pk}/"))
    by_label = ok(admin_api.get(f"{BASE}/versions/digits@2/"))

    assert by_id == by_label
    assert by_id["lineage"]["parent"] == {"id": parent.pk, "label": "digits@1"}
    assert by_id["lineage"]["training_job"] == {"id": job.pk, "status": "promoted", "trigger": "manual"}
    assert by_id["lineage"]["policy"] == {"id": rule.pk, "name": "nightly"}
    assert by_id["lineage"]["incidents"] == [incident.pk] and by_id["lineage"]["mlflow_run_id"] == "run-1"
    assert by_id["bundle_url"] == f"/api/v1/device/bundles/{child.pk}"
    assert ok(admin_api.get(f"{BASE}/versions/digits@1/"))["lineage"]["children"] == ["digits@2"]
    assert admin_api.get(f"{BASE}/versions/digits@9/").status_code == 404


def walk(client, url, params) -> tuple[list[dict], list[int]]:
    """Every page of a cursor-paginated list: (rows, queries per page)."""
    rows, queries = [], []
    while url:
        with CaptureQueriesContext(connection) as page_queries:
            page = ok(client.get(url, params))
        queries.append(len(page_queries))
        assert not any("COUNT(" in q["sql"].upper() for q in page_queries.captured_queries)
        rows += page["results"]
        url, params = page["next"], None
    return rows, queries


def test_10000_versions_page_newest_first_at_the_same_cost_on_every_page(admin_api):
    family = digits_family()
    bulk_versions(family, 10_000)

    everything, per_page = walk(admin_api, f"{BASE}/versions/", {"page_size": 1000})
    numbers = [row["number"] for row in everything]
    assert numbers == list(range(10_000, 0, -1))
    assert len(set(per_page)) == 1, per_page  # page 10 costs what page 1 does

    first = ok(admin_api.get(f"{BASE}/versions/", {"family": "digits", "page_size": 100}))
    with CaptureQueriesContext(connection) as deeper:
        second = ok(admin_api.get(first["next"]))
    assert [row["label"] for row in first["results"][:2]] == ["digits@10000", "digits@9999"]
    assert second["results"][0]["label"] == "digits@9900" and len(deeper) == per_page[0]


def test_the_version_list_filters_by_family_and_status_and_shows_aliases(admin_api):
    family = digits_family()
    one, two = fake_version(family), fake_version(family, status=VersionStatus.ARCHIVED)
    versions.move_alias(family, CHAMPION, one)

    archived = ok(admin_api.get(f"{BASE}/versions/", {"family": "digits", "status": "archived"}))["results"]
    current = ok(admin_api.get(f"{BASE}/versions/", {"status": "registered"}))["results"]
    other = ok(admin_api.get(f"{BASE}/versions/", {"family": "nope"}))["results"]

    assert [v["id"] for v in archived] == [two.pk]
    assert [(v["label"], v["aliases"]) for v in current] == [("digits@1", ["champion"])]
    assert other == []


# --- policies and jobs ----------------------------------------------------------------------------


def test_running_a_policy_by_hand_queues_a_job_and_a_second_run_is_a_409_with_the_reason(admin_api, registry_admin):
    rule = policy(name="nightly")

    started = admin_api.post(f"{BASE}/policies/{rule.pk}/run/", {"reason": "new labels"}, format="json")
    again = admin_api.post(f"{BASE}/policies/nightly/run/", {}, format="json")

    job = TrainingJob.objects.get()
    assert ok(started, 202)["id"] == job.pk and started.json()["status"] == "queued"
    assert job.trigger == "manual" and job.requested_by == registry_admin and job.evidence["reason"] == "new labels"
    assert again.status_code == 409 and f"job {job.pk} is queued" in again.json()["detail"]
    listed = {p["name"]: p["active_job"] for p in ok(admin_api.get(f"{BASE}/policies/"))["results"]}
    assert listed["nightly"] == job.pk and list(listed.values()).count(None) == len(listed) - 1


def test_a_policy_is_paused_and_resumed_and_resuming_closes_its_breaker(admin_api):
    rule = policy(name="nightly", consecutive_failures=3, breaker_open_until=timezone.now() + timedelta(hours=2))

    paused = ok(admin_api.post(f"{BASE}/policies/{rule.pk}/pause/"))
    resumed = ok(admin_api.post(f"{BASE}/policies/{rule.pk}/resume/"))
    detail = ok(admin_api.get(f"{BASE}/policies/{rule.pk}/"))

    assert paused["enabled"] is False and resumed["enabled"] is True
    assert resumed["breaker_open_until"] is None and resumed["consecutive_failures"] == 0
    assert detail["decision"]["trigger"] is None and detail["decision"]["reason"]
    assert admin_api.post(f"{BASE}/policies/unknown/pause/").status_code == 404


def test_jobs_filter_by_status_and_family_and_a_queued_one_is_cancelled_once(admin_api):
    family = digits_family()
    queued = TrainingJob.objects.create(family=family, trigger="manual")
    TrainingJob.objects.create(family=family, trigger="drift", status=JobStatus.FAILED, error="boom")

    failed = ok(admin_api.get(f"{BASE}/jobs/", {"status": "failed", "family": "digits"}))["results"]
    cancelled = ok(admin_api.post(f"{BASE}/jobs/{queued.pk}/cancel/"))
    again = admin_api.post(f"{BASE}/jobs/{queued.pk}/cancel/")

    assert [(j["trigger"], j["error"]) for j in failed] == [("drift", "boom")]
    assert cancelled["status"] == "cancelled"
    assert again.status_code == 409 and "only a queued job" in again.json()["detail"]


# --- rollouts ---------------------------------------------------------------------------------


@pytest.fixture
def lab(db):
    group = DeviceGroup.objects.create(name="lab")
    for n in range(4):
        make_device(f"lab-{n}", group)
    return group


def test_a_rollout_is_started_to_a_group_by_label_and_reported_with_its_summary(admin_api, lab, registry_admin):
    version = fake_version()
    body = {"version": "digits@1", "groups": ["lab"], "phases": [0.5, 1.0], "name": "lab first"}

    created = ok(admin_api.post(f"{BASE}/rollouts/", body, format="json"), 201)

    rollout = Rollout.objects.get()
    assert created["id"] == rollout.pk and rollout.version == version and rollout.created_by == registry_admin
    assert created["target_kind"] == "groups" and created["target"] == {"kind": "groups", "groups": ["lab"]}
    assert created["summary"]["phases"][0]["counts"] == {"assigned": 2}
    assert [d["action"] for d in created["decisions"]] == ["assign", "start"]  # newest first
    listed = ok(admin_api.get(f"{BASE}/rollouts/"))["results"]
    assert listed[0]["assignments"] == {"assigned": 2} and listed[0]["version"] == "digits@1"


def test_a_second_live_rollout_of_a_family_is_a_409_with_the_reason(admin_api):
    version = fake_version()
    ok(admin_api.post(f"{BASE}/rollouts/", {"version": version.pk, "require_approval": True}, format="json"), 201)
    second = admin_api.post(f"{BASE}/rollouts/", {"version": version.pk}, format="json")
    assert second.status_code == 409 and "already has a live rollout" in second.json()["detail"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"version": "digits@7"}, "version"),
        ({"version": 10**6}, "version"),
        ({"version": "seven"}, "version"),
        ({"version": "digits@1", "groups": ["nowhere"]}, "groups"),
        ({"version": "digits@1", "devices": [str(uuid.uuid4())]}, "devices"),
        ({"version": "digits@1", "devices": ["not-a-uuid"]}, "devices"),
        ({"version": "digits@1", "phases": [0.5, 0.2]}, "phases"),
        ({"version": "digits@1", "phases": ["0.5", 1]}, "phases"),
        ({"version": "digits@1", "gates": {"nonsense": 1}}, "gates"),
        ({"version": "digits@1", "target_filter": {"colour": "red"}}, "target_filter"),
        ({"version": "digits@1", "target_kind": "groups"}, "groups"),
        ({"version": "digits@1", "require_approval": "yes"}, "require_approval"),
    ],
)
def test_bad_rollout_input_is_a_400_naming_the_field(admin_api, body, field):
    fake_version()
    response = admin_api.post(f"{BASE}/rollouts/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not Rollout.objects.exists()


def test_a_rollout_is_approved_paused_resumed_and_cancelled_and_a_wrong_state_is_a_409(admin_api, lab, registry_admin):
    version = fake_version()
    rollout = ok(
        admin_api.post(f"{BASE}/rollouts/", {"version": version.pk, "require_approval": True}, format="json"), 201
    )
    url = f"{BASE}/rollouts/{rollout['id']}"
    assert rollout["status"] == RolloutStatus.AWAITING_APPROVAL

    early_pause = admin_api.post(f"{url}/pause/", {}, format="json")
    approved = ok(admin_api.post(f"{url}/approve/", {}, format="json"))
    paused = ok(admin_api.post(f"{url}/pause/", {"reason": "weekend"}, format="json"))
    resumed = ok(admin_api.post(f"{url}/resume/", {}, format="json"))
    cancelled = ok(admin_api.post(f"{url}/cancel/", {"reason": "wrong version"}, format="json"))
    late = admin_api.post(f"{url}/resume/", {}, format="json")

    assert early_pause.status_code == 409 and "awaiting approval" in early_pause.json()["detail"]
    assert approved["status"] == "running" and approved["summary"]["totals"]["assigned"] >= 1
    assert paused["status"] == "paused" and paused["reason"] == "weekend"
    assert resumed["status"] == "running" and cancelled["status"] == "cancelled"
    assert late.status_code == 409
    decisions = Rollout.objects.get(pk=rollout["id"]).decisions.order_by("at", "id")
    assert [(d.action, d.by) for d in decisions if d.action != "assign"][:5] == [
        ("start", registry_admin),
        ("approve", registry_admin),
        ("pause", registry_admin),
        ("resume", registry_admin),
        ("cancel", registry_admin),
    ]


def test_advancing_without_passing_gates_is_refused_unless_forced(admin_api, lab):
    version = fake_version()
    rollout = ok(admin_api.post(f"{BASE}/rollouts/", {"version": version.pk, "phases": [0.5, 1]}, format="json"), 201)
    url = f"{BASE}/rollouts/{rollout['id']}/advance/"

    refused = admin_api.post(url, {}, format="json")
    forced = ok(admin_api.post(url, {"force": True}, format="json"))

    assert refused.status_code == 409 and "gates do not pass" in refused.json()["detail"]
    assert forced["phase"] == 1 and forced["summary"]["totals"]["assigned"] == 4


def test_the_rollout_list_costs_the_same_for_one_or_five_rollouts(admin_api, lab):
    def start(n):
        for _ in range(n):
            version = fake_version()
            Rollout.objects.filter(status__in=["approval", "running", "paused"]).update(status="completed")
            ok(admin_api.post(f"{BASE}/rollouts/", {"version": version.pk}, format="json"), 201)

    start(1)
    with CaptureQueriesContext(connection) as one:
        assert len(ok(admin_api.get(f"{BASE}/rollouts/"))["results"]) == 1
    start(4)
    with CaptureQueriesContext(connection) as five:
        assert len(ok(admin_api.get(f"{BASE}/rollouts/"))["results"]) == 5
    assert len(one) == len(five), [q["sql"] for q in five.captured_queries]
