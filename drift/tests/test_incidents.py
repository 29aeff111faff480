"""Incidents kept up to date from drift events on a constructed fleet: one device, a group,
everyone; re-running changes nothing, a new event joins its incident."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import make_device
from devices.models import DeviceGroup, DeviceStatus
from drift import incidents
from drift.models import DriftEvent, Incident

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(db):
    """20 online devices in 4 groups of 5, two sites, one model version."""
    devices = []
    for g in range(4):
        group = DeviceGroup.objects.create(name=f"line-{g}")
        for i in range(5):
            device = make_device(f"cam-{g}-{i}", group).device
            device.location, device.status, device.model_version = f"site-{g % 2}", DeviceStatus.ONLINE, "digits@1"
            device.save()
            devices.append(device)
    return devices


def drift(device, minutes_ago: float = 5) -> DriftEvent:
    created = timezone.now() - timedelta(minutes=minutes_ago)
    return DriftEvent.objects.create(device=device, client_id=uuid.uuid4(), created=created, detector="knn_distance")


def test_one_drifting_device_is_a_device_local_incident(fleet):
    drift(fleet[0]), drift(fleet[0], minutes_ago=3)
    [incident] = incidents.triage_recent()
    assert (incident.kind, incident.device_count, incident.event_count) == ("device_local", 1, 2)
    assert set(DriftEvent.objects.values_list("incident", flat=True)) == {incident.pk}


def test_a_drifting_group_is_a_cohort_with_its_evidence(fleet):
    for device in fleet[5:10]:  # all of line-1
        drift(device)
    [incident] = incidents.triage_recent()
    assert (incident.kind, incident.slice_attribute, incident.slice_value) == ("cohort", "group", "line-1")
    evidence = incident.evidence
    assert (evidence["drifting_devices"], evidence["active_devices"]) == (5, 20)
    assert evidence["slices"][0]["value"] == "line-1" and evidence["slices"][0]["p_value"] < 0.05
    assert "line-1" in evidence["rule"]


def test_most_of_the_fleet_drifting_is_a_population_incident(fleet):
    for device in fleet[:16]:
        drift(device)
    [incident] = incidents.triage_recent()
    assert incident.kind == "population" and incident.device_count == 16


def test_running_again_keeps_the_incident_and_a_new_event_joins_it(fleet):
    drift(fleet[0], minutes_ago=20)
    [first] = incidents.triage_recent()
    assert incidents.triage_recent()[0].pk == first.pk
    for device in fleet[5:10]:
        drift(device, minutes_ago=1)  # within the window of the first: one incident grows
    [grown] = incidents.triage_recent()
    assert grown.pk == first.pk and grown.event_count == 6
    assert Incident.objects.count() == 1


def test_events_far_apart_are_separate_incidents(fleet):
    drift(fleet[0], minutes_ago=300)
    drift(fleet[7], minutes_ago=1)
    assert sorted(incident.kind for incident in incidents.triage_recent()) == ["device_local", "device_local"]
    assert Incident.objects.count() == 2


def test_offline_devices_do_not_dilute_the_fleet(fleet):
    for device in fleet[4:]:
        device.status = DeviceStatus.OFFLINE
        device.save()
    for device in fleet[:3]:
        drift(device)
    [incident] = incidents.triage_recent()
    assert incident.kind == "population"  # 3 of the 4 active devices


def test_triage_is_scheduled(db):
    from django_celery_beat.models import PeriodicTask

    assert PeriodicTask.objects.filter(task="drift.triage_incidents").exists()
