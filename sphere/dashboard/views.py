"""Operator pages for the fleet: the overview (counts, groups, devices, a live event feed) and one
device's page (identity, telemetry charts, drift events, model history). Views are doors: reads
come from ``sphere.dashboard.queries`` and ``feed``, shaping from ``display``; live updates arrive
over the topics of sphere.consumers (static/sphere/fleet.js, device.js)."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import render
from django.utils import timezone

from devices.models import Device, DeviceStatus
from devices.services import fleet_counts
from labeling.services import queue_counts
from sphere.dashboard import display, feed, queries
from sphere.pages import staff_page

VIEW_DEVICES = "devices.view_device"  # also what the live "fleet" topic asks (sphere.consumers)
VIEW_EVENTS = "drift.view_driftevent"
VIEW_ASSIGNMENTS = "registry.view_rolloutassignment"


@staff_page(VIEW_DEVICES)
def fleet(request):
    status = request.GET.get("status", "")
    if status not in DeviceStatus.values:
        status = ""
    topics = feed.permitted_topics(request.user)
    groups, more_groups = queries.group_counts()
    context = {
        "counts": fleet_counts(),
        "statuses": DeviceStatus.choices,
        "status": status,
        "page": queries.device_page(status or None, request.GET.get("page")),
        "keep": f"status={status}&" if status else "",
        "groups": groups,
        "more_groups": more_groups,
        "topics": topics,
        "feed": feed.recent_items(topics),
        "feed_urls": feed.url_patterns(),
        # The labeling queue at a glance, live over the "labeling" topic, for those who may watch it.
        "labeling": queue_counts() if request.user.has_perm("labeling.label_tasks") else None,
    }
    return render(request, "dashboard/fleet.html", context)


@staff_page(VIEW_DEVICES)
def device(request, pk):
    try:
        shown = queries.device(pk)
    except Device.DoesNotExist:
        raise Http404("No such device.") from None
    user = request.user
    window = display.window_key(request.GET.get("window"))
    series = queries.telemetry_series(shown, display.WINDOWS[window], timezone.now())
    may_see_events = user.has_perm(VIEW_EVENTS)
    context = {
        "device": shown,
        "tags": list(shown.tags.all()),
        "runtime": display.reported(shown.runtime),
        "bundle": display.reported(shown.bundle_outcome),
        "window": window,
        "windows": list(display.WINDOWS),
        "keep": f"window={window}&",
        "series": series,
        "charts": display.telemetry_charts(series, shown.heartbeat_period_s, shown.last_telemetry or {}),
        "events": queries.device_event_page(shown, request.GET.get("page")) if may_see_events else None,
        "history": queries.model_history(shown, with_rollouts=user.has_perm(VIEW_ASSIGNMENTS)),
        "topics": [topic for topic in feed.permitted_topics(user) if topic in ("fleet", "drift")],
    }
    return render(request, "dashboard/device.html", context)
