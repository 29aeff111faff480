"""The drift pages outside the admin: who may open them, what each shows, the verdict and alert
forms (through the services that hold the rules), their cost on big tables, and the live
``drift.event`` a newly stored event publishes."""

from __future__ import annotations

import io
import json
import re
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from drift.models import (
    Alert,
    AlertRule,
    AlertStatus,
    DriftEvent,
    DriftReport,
    DriftSample,
    DriftStatus,
    Incident,
    IncidentKind,
    ReportPolicy,
)
from drift.tests.test_drift_packages import drift_package, event_record, png, sample_record

pytestmark = pytest.mark.django_db
OVERVIEW = reverse("drift:overview")
ALERTS = reverse("drift:alerts")
DIRECT_REPORT = "/api/v1/device/drift-events"


# --- Personas ---------------------------------------------------------------------------------


def staff_with(django_user_model, username: str, codenames) -> object:
    user = django_user_model.objects.create_user(username, password=f"pw-{username}-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="drift", codename__in=codenames))
    return user


VIEW = ["view_driftevent", "view_driftsample", "view_incident", "view_driftreport", "view_alert"]


@pytest.fixture
def drift_operator(django_user_model):
    """Sees and works drift: every view permission, and changes events and alerts."""
    return staff_with(django_user_model, "dora", [*VIEW, "change_driftevent", "change_alert"])


@pytest.fixture
def viewer(django_user_model):
    """Sees drift, changes nothing."""
    return staff_with(django_user_model, "vera", VIEW)


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def as_operator(drift_operator):
    return client_for(drift_operator)


@pytest.fixture
def as_viewer(viewer):
    return client_for(viewer)


# --- Data -------------------------------------------------------------------------------------


def add_event(device, *, status=DriftStatus.PENDING, incident=None, detector="knn_distance", minutes_ago=0):
    return DriftEvent.objects.create(
        device=device,
        client_id=uuid.uuid4(),
        created=timezone.now() - timedelta(minutes=minutes_ago),
        detector=detector,
        model_version="digits@3",
        status=status,
        incident=incident,
        payload={"scores": {"distance": 2.71828, "statistic": 14.2}, "params": {"delta": 0.5, "threshold": 9.5}},
    )


def add_sample(event, *, label="7", confidence=0.46, image=True) -> DriftSample:
    client_id = uuid.uuid4()
    key = f"{event.device_id}/{client_id}.image.png" if image else ""
    if image:
        storages["drift_images"].save(key, ContentFile(png(28, 28)))
    return DriftSample.objects.create(
        device_id=event.device_id,
        client_id=client_id,
        event=event,
        event_client_id=event.client_id,
        created=timezone.now(),
        model_version=event.model_version,
        label=label,
        confidence=confidence,
        payload={"neighbour_distance": 3.25, "reasons": ["knn_distance"]},
        image_key=key,
    )


def add_incident(kind=IncidentKind.COHORT, **fields) -> Incident:
    now = timezone.now()
    evidence = {
        "rule": "cohort: group=line-1 holds 3 of 3 drifting devices",
        "drifting_devices": 3,
        "active_devices": 12,
        "detectors": ["knn_distance"],
        "slices": [
            {"attribute": "group", "value": "line-1", "drifting": 3, "size": 4, "coverage": 1.0, "qualifies": True}
            | {"concentration": 0.75, "rest_rate": 0.0, "p_value": 0.0182}
        ],
    }
    values = {"slice_attribute": "group", "slice_value": "line-1", "device_count": 3, "event_count": 3}
    return Incident.objects.create(
        kind=kind, evidence=evidence, started_at=now - timedelta(minutes=30), ended_at=now, **{**values, **fields}
    )


def add_alert(rule=None, *, status=AlertStatus.FIRING, subject=None) -> Alert:
    now = timezone.now()
    rule = rule or AlertRule.objects.create(name=f"drift burst {uuid.uuid4().hex[:6]}", kind="drift_event")
    return Alert.objects.create(
        rule=rule,
        subject=subject or f"device:{uuid.uuid4()}",
        status=status,
        message="4 drift events in 10 minutes",
        first_fired_at=now,
        last_fired_at=now,
        last_true_at=now,
        changed_at=now,
        window_started_at=now,
    )


def add_report(**fields) -> DriftReport:
    now = timezone.now()
    histogram = {"reference_counts": [5, 10, 5], "current_counts": [1, 4, 15], "edges": [0.0, 0.3, 0.6, 1.0]}
    column = {
        "test": "ks",
        "drift_score": 0.00012,
        "threshold": 0.05,
        "drift_detected": True,
        "p_value": 0.00012,
        "adjusted_p_value": 0.00036,
        "histogram": histogram,
    }
    values = {
        "scope": "fleet",
        "reference_start": now - timedelta(days=8),
        "reference_end": now - timedelta(days=7),
        "current_start": now - timedelta(days=1),
        "current_end": now,
        "status": "done",
        "dataset_drift": True,
        "share_of_drifted_features": 0.5,
        "reference_rows": 2000,
        "current_rows": 1800,
        "results": {"columns": {"confidence": column, "latency_ms": {**column, "drift_detected": False}}},
    }
    return DriftReport.objects.create(**{**values, **fields})


@pytest.fixture
def world(device_a):
    """One of everything a page shows."""
    incident = add_incident()
    event = add_event(device_a.device, incident=incident)
    add_sample(event)
    return {
        "event": event,
        "incident": incident,
        "report": add_report(),
        "alert": add_alert(),
    }


def pages(world) -> dict[str, str]:
    return {
        "overview": OVERVIEW,
        "event": reverse("drift:event", args=[world["event"].pk]),
        "incident": reverse("drift:incident", args=[world["incident"].pk]),
        "report": reverse("drift:report", args=[world["report"].pk]),
        "alerts": ALERTS,
    }


PAGES = ["overview", "event", "incident", "report", "alerts"]


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# --- Access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("persona", ["as_operator", "as_viewer"])
def test_each_drift_page_opens_for_an_operator_and_a_viewer(request, world, persona, name):
    response = request.getfixturevalue(persona).get(pages(world)[name])
    assert response.status_code == 200, text(response)[:2000]
    assert 'href="/drift/">Drift</a>' in text(response)  # the nav link
    assert "sphere/drift.js" in text(response)


@pytest.mark.parametrize("name", PAGES)
def test_an_anonymous_visitor_is_sent_to_sign_in(client, world, name):
    response = client.get(pages(world)[name])
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("persona", ["outsider", "operator"])  # signed in; the fleet operator is staff
def test_a_signed_in_user_without_drift_view_permission_gets_403(request, world, persona, name):
    response = client_for(request.getfixturevalue(persona)).get(pages(world)[name])
    assert response.status_code == 403


@pytest.mark.parametrize("name", PAGES)
def test_a_device_token_opens_no_drift_page(client, world, device_a, name):
    response = client.get(pages(world)[name], **device_a.auth)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_a_device_token_cannot_give_a_verdict(client, world, device_a):
    event = world["event"]
    response = client.post(reverse("drift:decide", args=[event.pk]), {"status": "confirmed"}, **device_a.auth)
    assert response.status_code == 302
    event.refresh_from_db()
    assert event.status == DriftStatus.PENDING


def test_the_pages_need_staff_like_the_images_and_the_live_feed(django_user_model, world):
    not_staff = staff_with(django_user_model, "nina", VIEW)
    not_staff.is_staff = False
    not_staff.save()
    assert client_for(not_staff).get(OVERVIEW).status_code == 403


def test_sections_the_user_may_not_see_are_left_out_of_the_overview(django_user_model, world):
    events_only = client_for(staff_with(django_user_model, "eve", ["view_driftevent", "view_driftsample"]))
    response = events_only.get(OVERVIEW)
    assert response.status_code == 200
    assert "Open incidents" not in text(response) and "Firing alerts" not in text(response)
    assert "Latest reports" not in text(response)
    assert events_only.get(pages(world)["alerts"]).status_code == 403


# --- Overview ---------------------------------------------------------------------------------


def test_the_overview_shows_pending_events_with_thumbnails_scores_and_model_version(as_operator, world):
    event = world["event"]
    sample = event.samples.get()
    response = as_operator.get(OVERVIEW)
    page = text(response)
    thumbnail = reverse("stored-file", args=["drift_images", sample.image_key]) + "?thumb=1"
    assert f'<img src="{thumbnail}"' in page
    assert f'data-row="event-{event.pk}"' in page
    assert "device-a" in page and "digits@3" in page and "knn_distance" in page
    assert "<code>distance 2.718</code>" in page and "<code>threshold 9.5</code>" in page
    assert 'class="badge drift-pending"' in page
    assert as_operator.get(thumbnail).headers["Content-Type"] == "image/png"


def test_the_overview_lists_events_of_the_chosen_status(as_operator, device_a):
    pending = add_event(device_a.device)
    confirmed = add_event(device_a.device, status=DriftStatus.CONFIRMED)
    shown = lambda response: {event.pk for event in response.context["page"]}  # noqa: E731
    assert shown(as_operator.get(OVERVIEW)) == {pending.pk}
    assert shown(as_operator.get(OVERVIEW, {"status": "confirmed"})) == {confirmed.pk}
    assert shown(as_operator.get(OVERVIEW, {"status": "all"})) == {pending.pk, confirmed.pk}
    assert shown(as_operator.get(OVERVIEW, {"status": "bogus"})) == {pending.pk}


def test_the_overview_counts_pending_events_open_incidents_by_kind_and_firing_alerts(as_operator, device_a):
    cohort, population, closed = add_incident(), add_incident(IncidentKind.POPULATION), add_incident()
    add_event(device_a.device, incident=cohort)
    add_event(device_a.device, status=DriftStatus.CONFIRMED, incident=population)  # confirmed: still open
    add_event(device_a.device, status=DriftStatus.REJECTED, incident=closed)  # all rejected: closed
    add_alert(), add_alert(status=AlertStatus.ACKNOWLEDGED)
    response = as_operator.get(OVERVIEW)
    assert response.context["pending_count"] == "1"
    counts = {kind: n for kind, _, n in response.context["incident_counts"]}
    assert counts == {"device_local": 0, "cohort": 1, "population": 1, "scattered": 0}
    assert response.context["firing_count"] == "1"
    assert [incident.pk for incident in response.context["incidents"]] == [population.pk, cohort.pk]
    assert '<span class="n" data-count="cohort">1</span>' in text(response)


def test_the_overview_shows_incident_evidence_firing_alerts_and_latest_reports(as_operator, world):
    page = text(as_operator.get(OVERVIEW))
    assert "cohort: group=line-1 holds 3 of 3 drifting devices" in page
    assert "4 drift events in 10 minutes" in page and world["alert"].rule.name in page
    assert reverse("drift:report", args=[world["report"].pk]) in page
    assert '<span class="badge drift-yes">drift</span>' in page and "50%" in page


# --- Event and verdicts -----------------------------------------------------------------------


def test_the_event_page_shows_every_sample_large_with_prediction_and_confidence(as_operator, device_a):
    event = add_event(device_a.device)
    samples = [add_sample(event, label=str(n), confidence=0.41 + n / 100) for n in range(3)]
    response = as_operator.get(reverse("drift:event", args=[event.pk]))
    page = text(response)
    for sample in samples:
        image = reverse("stored-file", args=["drift_images", sample.image_key])
        assert f'<img src="{image}" loading="lazy" width="192" height="192"' in page  # the image itself
        assert f"<strong>{sample.label}</strong>" in page
    assert f'<span class="confidence">{samples[2].confidence:.3f}</span>' in page
    assert "&quot;threshold&quot;: 9.5" in page  # the payload
    assert "waiting for an operator" in page


def test_confirming_an_event_records_who_and_why(as_operator, drift_operator, world):
    event = world["event"]
    response = as_operator.post(
        reverse("drift:decide", args=[event.pk]), {"status": "confirmed", "note": "lens fogged"}, follow=True
    )
    event.refresh_from_db()
    assert (event.status, event.decided_by, event.decision_note) == ("confirmed", drift_operator, "lens fogged")
    assert event.decided_at is not None
    assert messages_of(response) == [
        f"Drift event {event.pk} is now confirmed. The device hears of it on its next sync."
    ]
    page = text(response)
    assert "lens fogged" in page and "by dora" in page
    assert 'value="resolved"' in page and 'value="confirmed"' not in page  # what may follow
    assert "pending → <strong>confirmed</strong>" in response.content.decode()  # the history


def test_an_invalid_transition_is_refused_with_a_clear_message(as_operator, world):
    event = world["event"]
    response = as_operator.post(reverse("drift:decide", args=[event.pk]), {"status": "resolved"}, follow=True)
    event.refresh_from_db()
    assert event.status == DriftStatus.PENDING and event.decided_by is None
    assert messages_of(response) == ["Not changed: this event is pending; only confirmed events can be resolved."]


def test_an_unknown_verdict_is_refused_naming_the_field(as_operator, world):
    event = world["event"]
    response = as_operator.post(reverse("drift:decide", args=[event.pk]), {"status": "pending"}, follow=True)
    event.refresh_from_db()
    assert event.status == DriftStatus.PENDING
    assert messages_of(response)[0].startswith("Not changed: status: Select a valid choice.")


def test_a_viewer_sees_no_verdict_form_and_cannot_post_one(as_viewer, world):
    event = world["event"]
    assert 'name="status"' not in text(as_viewer.get(reverse("drift:event", args=[event.pk])))
    response = as_viewer.post(reverse("drift:decide", args=[event.pk]), {"status": "confirmed"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.status == DriftStatus.PENDING


def test_a_verdict_cannot_be_given_by_get(as_operator, world):
    assert as_operator.get(reverse("drift:decide", args=[world["event"].pk])).status_code == 405


def test_the_verdict_form_needs_its_csrf_token(drift_operator, world):
    event = world["event"]
    browser = client_for(drift_operator, enforce_csrf_checks=True)
    decide = reverse("drift:decide", args=[event.pk])
    assert browser.post(decide, {"status": "rejected"}).status_code == 403
    event.refresh_from_db()
    assert event.status == DriftStatus.PENDING
    form = text(browser.get(reverse("drift:event", args=[event.pk])))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    assert browser.post(decide, {"status": "rejected", "csrfmiddlewaretoken": token}).status_code == 302
    event.refresh_from_db()
    assert event.status == DriftStatus.REJECTED


def test_a_verdict_given_on_the_page_is_published_live(as_operator, world, django_capture_on_commit_callbacks):
    event = world["event"]
    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        as_operator.post(reverse("drift:decide", args=[event.pk]), {"status": "confirmed"})
    [(topic, name, data)] = [call.args for call in send.call_args_list]
    assert (topic, name, data()["id"], data()["status"]) == ("drift", "drift.verdict", event.pk, "confirmed")


# --- Incident and report ----------------------------------------------------------------------


def test_the_incident_page_shows_its_classification_evidence_and_events(as_operator, world, device_a):
    incident, event = world["incident"], world["event"]
    add_event(device_a.device)  # another incident's: not listed
    response = as_operator.get(reverse("drift:incident", args=[incident.pk]))
    page = text(response)
    assert '<span class="badge big kind-cohort">Cohort</span>' in page and "group = line-1" in page
    assert "cohort: group=line-1 holds 3 of 3 drifting devices" in page
    assert "<td>75%</td>" in page and "<td>0.0182</td>" in page  # the slice table
    assert [shown.pk for shown in response.context["page"]] == [event.pk]


def test_the_report_page_shows_each_feature_with_its_test_and_histogram(as_operator, world):
    response = as_operator.get(reverse("drift:report", args=[world["report"].pk]))
    page = text(response)
    rows = {row["name"]: row for row in response.context["features"]}
    assert set(rows) == {"confidence", "latency_ms"}
    assert (rows["confidence"]["test"], rows["confidence"]["score"], rows["confidence"]["threshold"]) == (
        "ks",
        "0.00012",
        "0.05",
    )
    assert rows["confidence"]["drifted"] and not rows["latency_ms"]["drifted"]
    assert rows["confidence"]["corrected_p"] == "0.00036"
    assert page.count('<svg class="drift-histogram"') == 2
    assert "2000" in page and "1800" in page


def test_a_failed_report_shows_why(as_operator):
    report = add_report(status="failed", error="Not enough data: 0 reference rows", results={}, dataset_drift=None)
    page = text(as_operator.get(reverse("drift:report", args=[report.pk])))
    assert "Not enough data: 0 reference rows" in page


@pytest.mark.parametrize("name", ["drift:event", "drift:incident", "drift:report"])
def test_a_missing_record_is_a_404(as_operator, name):
    assert as_operator.get(reverse(name, args=[999_999])).status_code == 404


# --- Alerts -----------------------------------------------------------------------------------


def test_acknowledging_an_alert_stops_it_firing_and_records_who(as_operator, drift_operator):
    alert = add_alert()
    response = as_operator.post(
        reverse("drift:change-alert", args=[alert.pk]), {"action": "acknowledge", "next": f"{ALERTS}?status=all"}
    )
    assert response.status_code == 302 and response["Location"] == f"{ALERTS}?status=all"
    alert.refresh_from_db()
    assert (alert.status, alert.acknowledged_by) == (AlertStatus.ACKNOWLEDGED, drift_operator)
    page = as_operator.get(ALERTS)
    assert messages_of(page) == [f"Alert {alert.pk} is now acknowledged."]
    assert 'value="acknowledge"' not in text(page) and 'value="resolve"' in text(page)


def test_resolving_an_alert_by_hand(as_operator):
    alert = add_alert(status=AlertStatus.ACKNOWLEDGED)
    as_operator.post(reverse("drift:change-alert", args=[alert.pk]), {"action": "resolve"})
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED and alert.resolved_at is not None


def test_acknowledging_a_resolved_alert_changes_nothing_and_says_so(as_operator):
    alert = add_alert(status=AlertStatus.RESOLVED)
    response = as_operator.post(reverse("drift:change-alert", args=[alert.pk]), {"action": "acknowledge"}, follow=True)
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert messages_of(response) == [f"Not changed: alert {alert.pk} is resolved, it cannot be acknowledged."]


def test_an_alert_action_needs_the_change_permission_and_a_csrf_token(as_viewer, drift_operator):
    alert = add_alert()
    url = reverse("drift:change-alert", args=[alert.pk])
    assert as_viewer.post(url, {"action": "acknowledge"}).status_code == 403
    assert 'value="acknowledge"' not in text(as_viewer.get(ALERTS))
    assert client_for(drift_operator, enforce_csrf_checks=True).post(url, {"action": "acknowledge"}).status_code == 403
    alert.refresh_from_db()
    assert alert.status == AlertStatus.FIRING


def test_the_alert_page_never_redirects_to_another_site(as_operator):
    alert = add_alert()
    url = reverse("drift:change-alert", args=[alert.pk])
    response = as_operator.post(url, {"action": "acknowledge", "next": "https://evil.example/"})
    assert response["Location"] == ALERTS


def test_the_alerts_page_filters_by_status(as_operator):
    firing, acknowledged, resolved = (add_alert(status=status) for status in AlertStatus.values)
    shown = lambda query: {alert.pk for alert in as_operator.get(ALERTS, query).context["page"]}  # noqa: E731
    assert shown({}) == {firing.pk, acknowledged.pk}  # open ones by default
    assert shown({"status": "resolved"}) == {resolved.pk}
    assert shown({"status": "all"}) == {firing.pk, acknowledged.pk, resolved.pk}


# --- Links to the admin ------------------------------------------------------------------------


def admin_url(name: str, *args, query: str = "") -> str:
    return reverse(f"admin:drift_{name}", args=args) + (f"?{query}" if query else "")


def test_the_overview_links_each_section_to_its_changelist_in_the_admin(as_operator, world):
    page = text(as_operator.get(OVERVIEW))
    links = [
        admin_url("driftevent_changelist", query="status__exact=pending"),
        admin_url("incident_changelist"),
        admin_url("alert_changelist", query="status__exact=firing"),
        admin_url("driftreport_changelist"),
    ]
    for link in links:
        assert f'href="{link}"' in page, link
        assert as_operator.get(link).status_code == 200, link  # the admin accepts the filter
    all_events = text(as_operator.get(OVERVIEW, {"status": "all"}))
    assert f'href="{admin_url("driftevent_changelist")}"' in all_events


def test_the_overview_links_only_to_the_admin_pages_the_user_may_open(django_user_model, world):
    events_only = client_for(staff_with(django_user_model, "eve", ["view_driftevent", "view_driftsample"]))
    page = text(events_only.get(OVERVIEW))
    assert f'href="{admin_url("driftevent_changelist", query="status__exact=pending")}"' in page
    for name in ("incident_changelist", "alert_changelist", "driftreport_changelist"):
        assert admin_url(name) not in page, name


def test_the_event_page_links_to_the_event_in_the_admin(as_viewer, world):
    link = admin_url("driftevent_change", world["event"].pk)
    assert f'<a class="admin-link" href="{link}">in the admin</a>' in text(as_viewer.get(pages(world)["event"]))
    assert as_viewer.get(link).status_code == 200


def test_the_incident_page_links_to_the_incident_and_its_events_in_the_admin(as_viewer, world):
    incident = world["incident"]
    page = text(as_viewer.get(pages(world)["incident"]))
    change = admin_url("incident_change", incident.pk)
    events = admin_url("driftevent_changelist", query=f"incident__id__exact={incident.pk}")
    assert f'<a class="admin-link" href="{change}">in the admin</a>' in page
    assert f'<a class="more" href="{events}">in the admin →</a>' in page
    assert as_viewer.get(change).status_code == 200
    listed = as_viewer.get(events)
    assert listed.status_code == 200 and [event.pk for event in listed.context["cl"].result_list] == [world["event"].pk]


def test_the_report_page_links_to_the_report_and_to_its_policy_for_who_may_open_policies(django_user_model, as_viewer):
    now = timezone.now()
    policy = ReportPolicy.objects.create(
        name="daily fleet", reference_start=now - timedelta(days=8), reference_end=now - timedelta(days=7)
    )
    report = add_report(policy=policy)
    url = reverse("drift:report", args=[report.pk])
    change, policy_link = admin_url("driftreport_change", report.pk), admin_url("reportpolicy_change", policy.pk)
    page = text(as_viewer.get(url))
    assert f'<a class="admin-link" href="{change}">in the admin</a>' in page
    assert policy_link not in page and "daily fleet" in page  # the viewer may not open policies
    policy_editor = client_for(staff_with(django_user_model, "pete", [*VIEW, "change_reportpolicy"]))
    assert f'<a href="{policy_link}">daily fleet</a>' in text(policy_editor.get(url))
    assert policy_editor.get(policy_link).status_code == 200


def test_the_alerts_page_links_to_the_filtered_changelist_and_each_alert_in_the_admin(as_operator):
    firing, resolved = add_alert(), add_alert(status=AlertStatus.RESOLVED)
    page = text(as_operator.get(ALERTS))
    assert f'<a class="admin-link" href="{admin_url("alert_changelist")}">alerts in the admin</a>' in page
    assert f'href="{admin_url("alert_change", firing.pk)}"' in page
    resolved_page = text(as_operator.get(ALERTS, {"status": "resolved"}))
    assert f'href="{admin_url("alert_changelist", query="status__exact=resolved")}"' in resolved_page
    assert f'href="{admin_url("alert_change", resolved.pk)}"' in resolved_page
    assert as_operator.get(admin_url("alert_change", firing.pk)).status_code == 200
    assert admin_url("alertrule_changelist") not in page  # the drift operator may not open alert rules


def test_alert_rules_link_to_the_admin_only_for_who_may_open_them(django_user_model, as_viewer):
    alert = add_alert()
    rules_editor = client_for(staff_with(django_user_model, "ruth", [*VIEW, "view_alertrule", "change_alertrule"]))
    page = text(rules_editor.get(ALERTS))
    assert f'<a class="admin-link" href="{admin_url("alertrule_changelist")}">edit alert rules in the admin</a>' in page
    rule_link = admin_url("alertrule_change", alert.rule_id)
    assert f'<a href="{rule_link}">{alert.rule.name}</a>' in page
    assert rules_editor.get(rule_link).status_code == 200
    assert "/admin/drift/alertrule/" not in text(as_viewer.get(ALERTS))


# --- Cost -------------------------------------------------------------------------------------


def fill(device, rows: int) -> None:
    rule = AlertRule.objects.create(name="many", kind="drift_event")
    for n in range(rows):
        incident = add_incident(kind=IncidentKind.values[n % 4])
        event = add_event(device, incident=incident, minutes_ago=n)
        for _ in range(3):
            add_sample(event)
        add_alert(rule, subject=f"device:{n}")
        add_report()


# Session, user, the user's and groups' permissions; then the capped count of the pending events
# (also the pending count), their page, its thumbnails, its sample counts, open incidents by
# kind and the latest ones, the firing count and the latest alerts, the latest reports.
OVERVIEW_QUERIES = 13


def test_the_overview_costs_a_fixed_number_of_queries_however_many_rows(
    as_operator, device_a, django_assert_max_num_queries
):
    fill(device_a.device, 30)
    with django_assert_max_num_queries(OVERVIEW_QUERIES):
        response = as_operator.get(OVERVIEW)
    assert len(response.context["page"]) == 20 and len(response.context["alerts"]) == 8
    assert all(len(event.thumbnails) == 3 and event.sample_count == 3 for event in response.context["page"])


def test_the_event_page_costs_a_fixed_number_of_queries_however_many_samples(
    as_operator, device_a, django_assert_max_num_queries
):
    event = add_event(device_a.device)
    for _ in range(40):
        add_sample(event, image=False)
    # Session, user, permissions (2), the event with its device, incident and decider, its
    # samples, their count, its verdict history.
    with django_assert_max_num_queries(8):
        response = as_operator.get(reverse("drift:event", args=[event.pk]))
    assert response.context["sample_count"] == 40


def test_the_incident_page_costs_a_fixed_number_of_queries_however_many_events(
    as_operator, device_a, django_assert_max_num_queries
):
    incident = add_incident()
    for n in range(30):
        add_sample(add_event(device_a.device, incident=incident, minutes_ago=n))
    # Session, user, permissions (2), the incident, the capped count, the events, thumbnails, counts.
    with django_assert_max_num_queries(9):
        response = as_operator.get(reverse("drift:incident", args=[incident.pk]))
    assert len(response.context["page"]) == 20


def test_the_alerts_page_costs_a_fixed_number_of_queries_however_many_alerts(
    as_operator, django_assert_max_num_queries
):
    rule = AlertRule.objects.create(name="many", kind="drift_event")
    for n in range(60):
        add_alert(rule, subject=f"device:{n}")
    # Session, user, permissions (2), the capped count, the page with rules and acknowledgers.
    with django_assert_max_num_queries(6):
        response = as_operator.get(ALERTS)
    assert len(response.context["page"]) == 50


def test_no_count_on_the_overview_reads_more_than_the_cap(as_operator, device_a):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    add_event(device_a.device)
    with CaptureQueriesContext(connection) as queries:
        as_operator.get(OVERVIEW, {"status": "all"})
    counts = [
        q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "drift_driftevent" in q["sql"]
    ]
    pending_and_page = [sql for sql in counts if "GROUP BY" not in sql.upper()]
    assert pending_and_page and all("LIMIT" in sql.upper() for sql in pending_and_page), counts


# --- Live: new drift events -------------------------------------------------------------------


def drift_events_sent(send) -> list[dict]:
    return [call.args[2] for call in send.call_args_list if call.args[:2] == ("drift", "drift.event")]


def test_a_drift_event_reported_directly_is_published_once_and_its_replay_not_at_all(
    api, device_a, django_capture_on_commit_callbacks
):
    body = json.dumps(event_record(samples=[{"id": str(uuid.uuid4()), "created": "2026-11-23T11:58:13Z"}]))
    with mock.patch("sphere.live._send") as send:
        for expected in (201, 200):
            with django_capture_on_commit_callbacks(execute=True):
                response = api.generic("POST", DIRECT_REPORT, body, content_type="application/json", **device_a.auth)
            assert response.status_code == expected, response.content
    event = DriftEvent.objects.get()
    [data] = drift_events_sent(send)
    assert (data["id"], data["device"], data["status"]) == (event.pk, str(device_a.device.pk), "pending")


def test_a_drift_event_from_a_package_is_published_once_and_not_when_it_arrives_again(send, device_a):
    event = event_record()
    image = io.BytesIO()
    Image.new("L", (8, 8), 200).save(image, format="PNG")
    samples = [(sample_record(event), {"image.png": image.getvalue()})]
    with mock.patch("sphere.live._send") as live_send:
        send(device_a, drift_package(device_a.device, event, samples))
        send(device_a, drift_package(device_a.device, event, samples))  # another package, same records
    [data] = drift_events_sent(live_send)
    assert data["event_id"] == event["id"] and data["detector"] == "knn_distance"
    assert DriftEvent.objects.count() == 1


def test_a_drift_event_rolled_back_is_never_published(device_a, django_capture_on_commit_callbacks):
    from django.db import transaction

    from drift import services

    with mock.patch("sphere.live._send") as send, django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            services.store_event(services.Origin(device_a.device.pk), event_record(), services.Attachments())
            raise RuntimeError("the package failed after the event")
    assert drift_events_sent(send) == [] and not DriftEvent.objects.exists()


def test_the_live_drift_topic_is_open_to_those_who_may_see_drift_events():
    from sphere.consumers import TOPIC_PERMISSIONS

    assert TOPIC_PERMISSIONS["drift"] == "drift.view_driftevent"
