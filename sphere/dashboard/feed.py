"""The fleet page's event feed: the newest events of every live topic the user may join.

The page opens with the latest stored records of each topic (drift events, processed and failed
packages, training jobs, rollout decisions: the newest few of each, by primary key) and
static/sphere/fleet.js adds what the topics publish from then on, in the same shape. Device
status changes are stored nowhere, so they only ever arrive live.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from heapq import nlargest

from django.urls import reverse

from devices.models import Package, PackageStatus
from drift.models import DriftEvent
from registry.models import RolloutDecision, TrainingJob
from sphere.consumers import TOPIC_PERMISSIONS

FEED_SIZE = 15
# The topics the feed listens to; the labeling topic carries queue counts, not events.
FEED_TOPICS = ("fleet", "drift", "packages", "registry")


@dataclass(frozen=True)
class FeedItem:
    key: str
    kind: str
    title: str
    detail: str
    badge: str
    badge_class: str
    url: str
    at: datetime | None


def permitted_topics(user) -> list[str]:
    """The feed topics sphere.consumers will let this user join: the page subscribes to no other."""
    if not (user.is_active and user.is_staff):
        return []
    return [topic for topic in FEED_TOPICS if user.has_perm(TOPIC_PERMISSIONS[topic])]


def recent_items(topics: list[str]) -> list[FeedItem]:
    readers = {"drift": _drift_events, "packages": _packages, "registry": _registry}
    items = [item for topic in topics if topic in readers for item in readers[topic]()]
    return nlargest(FEED_SIZE, items, key=lambda item: item.at.timestamp() if item.at else 0)


def _drift_events() -> list[FeedItem]:
    events = DriftEvent.objects.select_related("device").defer("payload", "device__last_telemetry")
    return [
        FeedItem(
            key=f"drift-{event.pk}",
            kind="drift",
            title=f"Drift: {event.detector or 'drift'}",
            detail=f"{event.device.name} · model {event.model_version or '—'}",
            badge=event.status,
            badge_class=f"drift-{event.status}",
            url=reverse("drift:event", args=[event.pk]),
            at=event.received_at,
        )
        for event in events.order_by("-pk")[:FEED_SIZE]
    ]


def _packages() -> list[FeedItem]:
    done = Package.objects.filter(status__in=[PackageStatus.PROCESSED, PackageStatus.FAILED]).select_related("device")
    return [
        FeedItem(
            key=f"package-{package.pk}",
            kind="package",
            title=f"Package {package.kind} {package.status}",
            detail=package.device.name + (f" · {package.error[:120]}" if package.error else ""),
            badge=package.status,
            badge_class=f"package-{package.status}",
            url=reverse("admin:devices_package_change", args=[package.pk]),
            at=package.processed_at,
        )
        for package in done.only("pk", "kind", "status", "error", "processed_at", "device__name").order_by("-pk")[
            :FEED_SIZE
        ]
    ]


def _registry() -> list[FeedItem]:
    jobs = TrainingJob.objects.select_related("family").only(
        "pk", "status", "trigger", "created", "started_at", "finished_at", "family__name"
    )
    decisions = RolloutDecision.objects.select_related("rollout__version__family").order_by("-pk")
    return [_job(job) for job in jobs.order_by("-pk")[:FEED_SIZE]] + [
        _rollout(decision) for decision in decisions[:FEED_SIZE]
    ]


def _job(job: TrainingJob) -> FeedItem:
    return FeedItem(
        key=f"job-{job.pk}",
        kind="job",
        title=f"Training job {job.pk} {job.status}",
        detail=f"{job.family.name} · {job.trigger}",
        badge=job.status,
        badge_class=f"job-{job.status}",
        url=reverse("registry:job", args=[job.pk]),
        at=job.finished_at or job.started_at or job.created,
    )


def _rollout(decision: RolloutDecision) -> FeedItem:
    rollout = decision.rollout
    return FeedItem(
        key=f"rollout-{rollout.pk}-{decision.pk}",
        kind="rollout",
        title=f"Rollout {rollout}: {decision.action}",
        detail=f"{rollout.version.label} · phase {decision.phase + 1} · {rollout.status}",
        badge=rollout.status,
        badge_class=f"rollout-{rollout.status}",
        url=reverse("registry:rollout", args=[rollout.pk]),
        at=decision.at,
    )


def url_patterns() -> dict[str, str]:
    """Where each kind of live event links, with ``{id}`` for the record's id (fleet.js fills it)."""
    return {
        "device": _pattern("device", uuid.UUID(int=0)),
        "device_admin": _pattern("admin:devices_device_change", uuid.UUID(int=0)),
        "drift": _pattern("drift:event", 0),
        "package": _pattern("admin:devices_package_change", 0),
        "job": _pattern("registry:job", 0),
        "rollout": _pattern("registry:rollout", 0),
    }


def _pattern(name: str, sample) -> str:
    return reverse(name, args=[sample]).replace(f"/{sample}/", "/{id}/")
