"""Drift admin: events with their first samples inline, samples with thumbnails from the
stored-file view, the same cost on any table size, read-only."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.tests.test_ingest_admin import assert_same_cost_for_3_or_30_rows
from drift.admin import SAMPLES_SHOWN
from drift.models import DriftEvent, DriftSample

pytestmark = pytest.mark.django_db


@pytest.fixture
def drift_operator(operator):
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="drift"))
    return operator


@pytest.fixture
def admin_client_for(client, drift_operator):
    client.force_login(drift_operator)
    return client


def changelist(model_name: str) -> str:
    return reverse(f"admin:drift_{model_name}_changelist")


def add_event(device, *, detector="adwin", model_version="digits@1") -> DriftEvent:
    return DriftEvent.objects.create(
        device=device,
        client_id=uuid.uuid4(),
        created=timezone.now(),
        detector=detector,
        model_version=model_version,
        payload={"statistic": 0.42, "threshold": 0.3},
    )


def add_sample(device, event=None, *, label="7", image=True, attachments=()) -> DriftSample:
    client_id = uuid.uuid4()
    return DriftSample.objects.create(
        device=device,
        client_id=client_id,
        event=event,
        event_client_id=event.client_id if event else None,
        created=timezone.now(),
        model_version="digits@1",
        label=label,
        confidence=0.46,
        features=np.ones(8, dtype="<f4").tobytes(),
        image_key=f"{device.pk}/{client_id}.png" if image else "",
        attachments=list(attachments),
    )


def add_event_with_samples(device, samples=2) -> DriftEvent:
    event = add_event(device)
    for _ in range(samples):
        add_sample(device, event)
    return event


ROWS = {"driftevent": add_event_with_samples, "driftsample": add_sample}


# --- Access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ROWS)
def test_the_drift_changelists_open_for_an_operator_with_drift_permissions(admin_client_for, device_a, model_name):
    ROWS[model_name](device_a.device)
    response = admin_client_for.get(changelist(model_name))
    assert response.status_code == 200, response.content[:2000]


@pytest.mark.parametrize("model_name", ROWS)
def test_an_outsider_is_sent_to_sign_in(client, outsider, model_name):
    client.force_login(outsider)
    response = client.get(changelist(model_name))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize("model_name", ROWS)
def test_staff_without_drift_permissions_are_refused(client, operator, model_name):
    client.force_login(operator)
    assert client.get(changelist(model_name)).status_code == 403


@pytest.mark.parametrize("model_name", ROWS)
def test_drift_rows_cannot_be_added_or_changed_in_the_admin(admin_client_for, device_a, model_name):
    ROWS[model_name](device_a.device)
    assert admin_client_for.get(reverse(f"admin:drift_{model_name}_add")).status_code == 403
    row = DriftEvent.objects.first() if model_name == "driftevent" else DriftSample.objects.first()
    change = reverse(f"admin:drift_{model_name}_change", args=[row.pk])
    response = admin_client_for.post(change, {"label": "changed", "detector": "changed"})
    assert response.status_code == 403


# --- Cost -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ROWS)
def test_each_drift_changelist_costs_the_same_for_3_or_30_rows(admin_client_for, device_a, device_b, model_name):
    assert_same_cost_for_3_or_30_rows(admin_client_for, changelist(model_name), ROWS[model_name], device_a, device_b)


@pytest.mark.parametrize("model_name", ROWS)
def test_each_drift_changelist_runs_a_pinned_number_of_queries(admin_client_for, device_a, model_name):
    # Session, user, the user's and the group's permissions, two recent-values filters, the
    # capped count, the page (sample counts are a subquery of the page query).
    for _ in range(5):
        ROWS[model_name](device_a.device)
    with CaptureQueriesContext(connection) as queries:
        admin_client_for.get(changelist(model_name))
    assert len(queries) == 8, [q["sql"] for q in queries.captured_queries]


@pytest.mark.parametrize("model_name", ROWS)
def test_no_drift_changelist_counts_the_whole_table(admin_client_for, device_a, model_name):
    ROWS[model_name](device_a.device)
    with CaptureQueriesContext(connection) as queries:
        admin_client_for.get(changelist(model_name))
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_an_event_page_costs_the_same_for_3_or_60_samples(admin_client_for, device_a):
    small_event, large_event = add_event_with_samples(device_a.device, 3), add_event_with_samples(device_a.device, 60)
    # The first page view fills the content-type cache.
    admin_client_for.get(reverse("admin:drift_driftevent_change", args=[small_event.pk]))
    with CaptureQueriesContext(connection) as small:
        admin_client_for.get(reverse("admin:drift_driftevent_change", args=[small_event.pk]))
    with CaptureQueriesContext(connection) as large:
        response = admin_client_for.get(reverse("admin:drift_driftevent_change", args=[large_event.pk]))
    assert response.status_code == 200
    assert len(small) == len(large), [q["sql"] for q in large.captured_queries]


# --- Events -----------------------------------------------------------------------------------


def test_the_event_list_shows_each_events_sample_count(admin_client_for, device_a):
    add_event_with_samples(device_a.device, 2)
    add_event_with_samples(device_a.device, 0)
    add_sample(device_a.device)  # not linked to any event
    response = admin_client_for.get(changelist("driftevent"))
    assert sorted(event.sample_count for event in response.context["cl"].result_list) == [0, 2]


def test_an_event_page_shows_its_first_samples_as_lazy_thumbnails(admin_client_for, device_a):
    event = add_event_with_samples(device_a.device, SAMPLES_SHOWN + 10)
    response = admin_client_for.get(reverse("admin:drift_driftevent_change", args=[event.pk]))
    assert response.status_code == 200
    assert response.content.count(b'loading="lazy"') == SAMPLES_SHOWN
    sample = DriftSample.objects.filter(event=event).order_by("-created").first()
    url = reverse("stored-file", args=["drift_images", sample.image_key])
    assert f'<a href="{url}"><img src="{url}?thumb=1" loading="lazy"'.encode() in response.content
    samples_url = f"{changelist('driftsample')}?event__id__exact={event.pk}"
    assert f'href="{samples_url}"'.encode() in response.content
    assert f"All {SAMPLES_SHOWN + 10} sample(s)".encode() in response.content
    assert b"&quot;threshold&quot;: 0.3" in response.content  # the payload


def test_the_event_filters_narrow_by_device_and_detector(admin_client_for, device_a, device_b):
    mine = add_event(device_a.device, detector="page_hinkley")
    add_event(device_b.device, detector="adwin")
    by_device = admin_client_for.get(changelist("driftevent"), {"device": str(device_a.device.pk)})
    assert list(by_device.context["cl"].result_list) == [mine]
    by_detector = admin_client_for.get(changelist("driftevent"), {"detector": "page_hinkley"})
    assert list(by_detector.context["cl"].result_list) == [mine]
    spec = next(s for s in by_detector.context["cl"].filter_specs if getattr(s, "parameter_name", "") == "detector")
    assert spec.lookup_choices == [("adwin", "adwin"), ("page_hinkley", "page_hinkley")]


def test_events_are_searched_by_exact_client_id_only(admin_client_for, device_a):
    mine = add_event(device_a.device)
    add_event(device_a.device)
    found = admin_client_for.get(changelist("driftevent"), {"q": str(mine.client_id)})
    assert list(found.context["cl"].result_list) == [mine]
    assert list(admin_client_for.get(changelist("driftevent"), {"q": "adwin"}).context["cl"].result_list) == []


# --- Samples ----------------------------------------------------------------------------------


def test_sample_thumbnails_point_to_the_stored_file_view(admin_client_for, device_a):
    sample = add_sample(device_a.device)
    add_sample(device_a.device, image=False)
    response = admin_client_for.get(changelist("driftsample"))
    url = reverse("stored-file", args=["drift_images", sample.image_key])
    assert response.content.count(b'loading="lazy"') == 1
    assert f'<a href="{url}"><img src="{url}?thumb=1" loading="lazy"'.encode() in response.content


def test_a_sample_page_links_its_image_and_attachments(admin_client_for, device_a):
    attachment = {"name": "frame.npy", "key": f"{device_a.device.pk}/frame.npy", "size": 128, "sha256": "0" * 64}
    sample = add_sample(device_a.device, add_event(device_a.device), attachments=[attachment])
    response = admin_client_for.get(reverse("admin:drift_driftsample_change", args=[sample.pk]))
    assert response.status_code == 200
    image_url = reverse("stored-file", args=["drift_images", sample.image_key])
    assert f"{image_url}?thumb=1".encode() in response.content
    attachment_url = reverse("stored-file", args=["drift_images", attachment["key"]])
    assert f'<a href="{attachment_url}">frame.npy</a>'.encode() in response.content
    assert reverse("admin:drift_driftevent_change", args=[sample.event_id]).encode() in response.content
    assert b'<div class="readonly">8</div>' in response.content  # 8 float32 features


def test_the_sample_filters_narrow_by_event_and_by_being_linked(admin_client_for, device_a):
    event = add_event(device_a.device)
    linked, unlinked = add_sample(device_a.device, event), add_sample(device_a.device)
    by_event = admin_client_for.get(changelist("driftsample"), {"event__id__exact": event.pk})
    assert list(by_event.context["cl"].result_list) == [linked]
    without_event = admin_client_for.get(changelist("driftsample"), {"event__isempty": "1"})
    assert list(without_event.context["cl"].result_list) == [unlinked]


# --- Verdicts ---------------------------------------------------------------------------------


def run_action(client, action: str, events) -> object:
    data = {"action": action, "_selected_action": [event.pk for event in events]}
    return client.post(changelist("driftevent"), data, follow=True)


def test_an_operator_confirms_and_rejects_events_from_the_list(admin_client_for, drift_operator, device_a):
    first, second = add_event(device_a.device), add_event(device_a.device)
    response = run_action(admin_client_for, "confirm", [first])
    assert "1 event(s) now confirmed." in response.content.decode()
    run_action(admin_client_for, "reject", [second])
    first.refresh_from_db(), second.refresh_from_db()
    assert (first.status, first.decided_by, second.status) == ("confirmed", drift_operator, "rejected")
    response = run_action(admin_client_for, "resolve", [first, second])
    assert "1 event(s) could not move to resolved." in response.content.decode()


def test_the_verdict_actions_need_the_change_permission(client, operator, device_a):
    operator.user_permissions.add(Permission.objects.get(codename="view_driftevent"))
    client.force_login(operator)
    event = add_event(device_a.device)
    run_action(client, "confirm", [event])
    event.refresh_from_db()
    assert event.status == "pending"


def test_an_incident_page_shows_its_classification_and_evidence(admin_client_for, device_a):
    from drift import incidents

    event = add_event(device_a.device)
    event.created = timezone.now()
    event.save()
    [incident] = incidents.triage_recent()
    listing = admin_client_for.get(changelist("incident"))
    assert listing.status_code == 200 and b"Device-local" in listing.content
    page = admin_client_for.get(reverse("admin:drift_incident_change", args=[incident.pk]))
    assert b"drifting_devices" in page.content
    assert f"incident__id__exact={incident.pk}".encode() in page.content
    events = admin_client_for.get(changelist("driftevent"), {"incident__id__exact": incident.pk})
    assert events.status_code == 200 and list(events.context["cl"].result_list) == [event]
