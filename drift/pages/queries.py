"""What the drift pages read, at a cost that does not grow with the big tables (events,
samples, alerts): their counts stop at COUNT_CAP, lists are pages or the latest few, each served
by an index. Only incidents, a small table, are counted in full."""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Prefetch, prefetch_related_objects

from drift.models import (
    Alert,
    AlertStatus,
    DriftEvent,
    DriftReport,
    DriftSample,
    DriftStatus,
    Incident,
    IncidentKind,
)
from sphere.admin_paginator import BoundedCountPaginator

COUNT_CAP = BoundedCountPaginator.cap
EVENTS_PER_PAGE = 20
ALERTS_PER_PAGE = 50
THUMBNAILS = 4
SAMPLES_SHOWN = 200
LATEST = 8
# An incident is open while one of its events is still work: pending (to decide) or
# confirmed (to deal with, then resolve).
OPEN_EVENT_STATUSES = (DriftStatus.PENDING, DriftStatus.CONFIRMED)
OPEN_ALERT_STATUSES = (AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED)


def capped_count(queryset) -> int:
    # A LIMIT inside the count: the cost stops at COUNT_CAP rows however many match.
    return queryset[:COUNT_CAP].count()


# --- Events -----------------------------------------------------------------------------------


def event_page(status: str | None, number):
    """A page of events, newest first. Within a status the (status, created) index gives the
    order; across statuses the primary key does (arrival order), as no index covers created alone."""
    events = DriftEvent.objects.select_related("device", "incident")
    events = events.filter(status=status).order_by("-created") if status else events.order_by("-pk")
    return _with_details(BoundedCountPaginator(events, EVENTS_PER_PAGE).get_page(number))


def incident_event_page(incident: Incident, number):
    events = DriftEvent.objects.filter(incident=incident).select_related("device", "incident").order_by("-created")
    return _with_details(BoundedCountPaginator(events, EVENTS_PER_PAGE).get_page(number))


def _with_details(page):
    """The page's events with their first THUMBNAILS images and their sample counts: two
    queries for the whole page (the samples' event index), not two per event."""
    page.object_list = events = list(page.object_list)
    with_images = DriftSample.objects.exclude(image_key="").defer("features", "payload").order_by("created")
    prefetch_related_objects(events, Prefetch("samples", with_images[:THUMBNAILS], to_attr="thumbnails"))
    counts = dict(DriftSample.objects.filter(event__in=events).order_by().values_list("event").annotate(n=Count("pk")))
    for event in events:
        event.sample_count = counts.get(event.pk, 0)
    return page


def event(pk: int) -> DriftEvent:
    return DriftEvent.objects.select_related("device", "incident", "decided_by").get(pk=pk)


def samples_of(event: DriftEvent) -> tuple[list[DriftSample], int]:
    """The event's first SAMPLES_SHOWN samples, oldest first, and how many it has."""
    samples = event.samples.defer("features").order_by("created")
    return list(samples[:SAMPLES_SHOWN]), event.samples.count()


# --- Incidents, alerts, reports ---------------------------------------------------------------


def open_incidents():
    # Incidents are few (each groups events close in time); the check per incident is served
    # by the events' incident index.
    still_open = DriftEvent.objects.filter(incident=OuterRef("pk"), status__in=OPEN_EVENT_STATUSES)
    return Incident.objects.filter(Exists(still_open))


def open_incident_counts() -> dict[str, int]:
    counts = dict.fromkeys(IncidentKind.values, 0)
    counts.update(open_incidents().order_by().values_list("kind").annotate(n=Count("pk")))
    return counts


def latest_open_incidents() -> list[Incident]:
    return list(open_incidents().order_by("-started_at")[:LATEST])


def firing_alerts() -> list[Alert]:
    # The (status, -last_fired_at) index serves this exactly.
    firing = Alert.objects.filter(status=AlertStatus.FIRING).select_related("rule").order_by("-last_fired_at")
    return list(firing[:LATEST])


def firing_alert_count() -> int:
    return capped_count(Alert.objects.filter(status=AlertStatus.FIRING))


def alert_page(statuses, number):
    alerts = Alert.objects.filter(status__in=statuses).select_related("rule", "acknowledged_by")
    return BoundedCountPaginator(alerts.order_by("-last_fired_at"), ALERTS_PER_PAGE).get_page(number)


def latest_reports() -> list[DriftReport]:
    # Newest by primary key (its index), without the per-feature results: they hold the histograms.
    return list(DriftReport.objects.defer("results", "overrides").order_by("-pk")[:LATEST])


def pending_event_count() -> int:
    return capped_count(DriftEvent.objects.filter(status=DriftStatus.PENDING))
