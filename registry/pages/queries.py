"""What the registry pages read, at a cost that does not grow with the big tables. Versions (a
family may hold 10,000) page by primary key without counting; jobs, rollouts, alias moves and
decisions page with counts that stop at a cap; everything a page row shows comes in a fixed
number of queries for the whole page."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, OuterRef, Prefetch, Q, Subquery, prefetch_related_objects

from drift.models import Incident
from registry.models import (
    LIVE_ROLLOUT_STATUSES,
    Alias,
    AliasEvent,
    ModelFamily,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutAssignment,
    RolloutDecision,
    TrainingJob,
)
from sphere.admin_paginator import BoundedCountPaginator

VERSIONS_PER_PAGE = 25
ALIAS_EVENTS_PER_PAGE = 50
JOBS_PER_PAGE = 25
ROLLOUTS_PER_PAGE = 20
DECISIONS_PER_PAGE = 25
SHOWN = 20  # children, rollouts and alias moves listed on a version's page
# JSON columns a list row never shows: the manifest lists every file, metrics hold the search.
HEAVY_VERSION_FIELDS = ("manifest", "params", "metrics")


# --- Keyset pages ---------------------------------------------------------------------------------


@dataclass
class KeysetPage:
    """Rows newest first by primary key. ``?after=<pk>`` pages to older rows, ``?before=<pk>`` to
    newer ones: each page is one range scan of the primary key index, however deep, and nothing is
    counted. ``older``/``newer`` are the cursors of the neighbouring pages (None: there is none)."""

    rows: list
    newer: int | None = None
    older: int | None = None

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


def keyset_page(queryset, *, size: int, after: int | None = None, before: int | None = None) -> KeysetPage:
    if before is not None:
        rows = list(queryset.filter(pk__gt=before).order_by("pk")[: size + 1])
        if rows:
            more, rows = len(rows) > size, rows[:size][::-1]
            return KeysetPage(rows, newer=rows[0].pk if more else None, older=rows[-1].pk)
    page = queryset.filter(pk__lt=after) if after is not None else queryset
    rows = list(page.order_by("-pk")[: size + 1])
    more, rows = len(rows) > size, rows[:size]
    return KeysetPage(
        rows, newer=rows[0].pk if after is not None and rows else None, older=rows[-1].pk if more else None
    )


# --- Families and versions ------------------------------------------------------------------------


def families() -> list[ModelFamily]:
    """Every family (a handful) with its aliases, newest version and live rollout."""
    newest = ModelVersion.objects.filter(family=OuterRef("pk")).order_by("-number")  # (family, -number) index
    live = Rollout.objects.filter(family=OuterRef("pk"), status__in=LIVE_ROLLOUT_STATUSES)
    aliases = Alias.objects.select_related("version__family").defer(*_heavy("version")).order_by("name")
    return list(
        ModelFamily.objects.annotate(
            newest_id=Subquery(newest.values("pk")[:1]),
            newest_number=Subquery(newest.values("number")[:1]),
            live_rollout_id=Subquery(live.values("pk")[:1]),
        )
        .prefetch_related(Prefetch("aliases", aliases))
        .order_by("name")
    )


def family_named(name: str) -> ModelFamily | None:
    return ModelFamily.objects.filter(name=name).first()


def version_page(family: ModelFamily | None, *, after: int | None, before: int | None) -> KeysetPage:
    """A page of versions with their family, parent, policy and snapshot (joined), aliases and
    incidents (one query each for the whole page)."""
    versions = ModelVersion.objects.select_related("family", "parent__family", "policy", "snapshot").defer(
        "manifest", "params", *_heavy("parent"), "snapshot__class_counts"
    )
    if family is not None:
        versions = versions.filter(family=family)
    page = keyset_page(versions, size=VERSIONS_PER_PAGE, after=after, before=before)
    prefetch_related_objects(
        page.rows,
        Prefetch("aliases", Alias.objects.only("pk", "name", "version_id").order_by("name")),
        Prefetch("incidents", Incident.objects.only("pk", "kind").order_by("pk")),
    )
    return page


def version(pk: int) -> ModelVersion:
    return ModelVersion.objects.select_related("family", "parent__family", "snapshot", "policy", "created_by").get(
        pk=pk
    )


def version_lineage(version: ModelVersion) -> dict:
    """Incidents it answers and the first versions trained from it."""
    children = list(version.children.select_related("family").defer(*HEAVY_VERSION_FIELDS).order_by("-number")[:SHOWN])
    return {"incidents": list(version.incidents.order_by("pk")), "children": children}


def alias_moves_of(version: ModelVersion) -> list[AliasEvent]:
    """The latest moves of any alias onto or off this version."""
    moves = AliasEvent.objects.filter(Q(version=version) | Q(previous=version), family_id=version.family_id)
    return list(_with_versions(moves).order_by("-at", "-id")[:SHOWN])


def rollouts_of(version: ModelVersion) -> list[Rollout]:
    rows = Rollout.objects.filter(version=version).select_related("baseline__family").defer(*_heavy("baseline"))
    return list(rows.order_by("-pk")[:SHOWN])


# --- Aliases --------------------------------------------------------------------------------------


def alias_names(family: ModelFamily) -> list[str]:
    # Served by the (family, alias, -at) index alone.
    return list(AliasEvent.objects.filter(family=family).order_by("alias").values_list("alias", flat=True).distinct())


def alias_event_page(family: ModelFamily, alias: str, number):
    events = AliasEvent.objects.filter(family=family)
    if alias:
        events = events.filter(alias=alias)
    return BoundedCountPaginator(_with_versions(events).order_by("-at", "-id"), ALIAS_EVENTS_PER_PAGE).get_page(number)


def versions_numbered(family: ModelFamily, numbers) -> dict[int, ModelVersion]:
    rows = family.versions.defer(*HEAVY_VERSION_FIELDS).filter(number__in=list(numbers))
    return {version.number: version for version in rows}


def _with_versions(events):
    return events.select_related("version__family", "previous__family", "by").defer(
        *_heavy("version"), *_heavy("previous")
    )


# --- Policies and jobs ----------------------------------------------------------------------------


def policies() -> list[RetrainingPolicy]:
    """Every policy (a few per family) with its newest job: one job at a time runs per policy,
    so an active job is always the newest."""
    newest = TrainingJob.objects.filter(policy=OuterRef("pk")).order_by("-created", "-id")
    return list(
        RetrainingPolicy.objects.select_related("family")
        .annotate(
            newest_job_id=Subquery(newest.values("pk")[:1]),
            newest_job_status=Subquery(newest.values("status")[:1]),
        )
        .order_by("family__name", "name")
    )


def job_page(statuses, number):
    jobs = TrainingJob.objects.select_related("family", "policy", "produced_version__family").defer(
        "result", "params", "evidence", *_heavy("produced_version")
    )
    if statuses:
        jobs = jobs.filter(status__in=statuses)
    # Newest first by primary key (arrival order): no index covers created alone.
    return BoundedCountPaginator(jobs.order_by("-pk"), JOBS_PER_PAGE).get_page(number)


def job(pk: int) -> TrainingJob:
    return TrainingJob.objects.select_related(
        "family", "policy", "snapshot", "base_version__family", "produced_version__family", "requested_by"
    ).get(pk=pk)


# --- Rollouts -------------------------------------------------------------------------------------


def rollout_page(statuses, number):
    """A page of rollouts with their assignment counts per state (one GROUP BY for the page) and
    their last decision (one query for the page)."""
    rollouts = Rollout.objects.select_related("family", "version__family", "baseline__family").defer(
        *_heavy("version"), *_heavy("baseline")
    )
    if statuses:
        rollouts = rollouts.filter(status__in=statuses)
    page = BoundedCountPaginator(rollouts.order_by("-pk"), ROLLOUTS_PER_PAGE).get_page(number)
    page.object_list = rows = list(page.object_list)
    ids = [rollout.pk for rollout in rows]
    counts = assignment_counts(ids)
    last = {decision.rollout_id: decision for decision in last_decisions(ids)}
    for rollout in rows:
        rollout.counts = counts.get(rollout.pk, {})
        rollout.last_decision = last.get(rollout.pk)
    return page


def last_decisions(rollout_ids: list[int]) -> list[RolloutDecision]:
    """The newest decision of each rollout, in one query."""
    newest = RolloutDecision.objects.filter(rollout=OuterRef("pk")).order_by("-at", "-id").values("pk")[:1]
    chosen = Rollout.objects.filter(pk__in=rollout_ids).annotate(last=Subquery(newest)).values("last")
    return list(RolloutDecision.objects.filter(pk__in=chosen)) if rollout_ids else []


def assignment_counts(rollout_ids: list[int]) -> dict[int, dict[str, int]]:
    """Rollout → assignment state → devices, over all phases; the (rollout, state) index serves it."""
    counts: dict[int, dict[str, int]] = {}
    if not rollout_ids:
        return counts
    rows = (
        RolloutAssignment.objects.filter(rollout_id__in=rollout_ids)
        .values_list("rollout_id", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for rollout_id, state, n in rows:
        counts.setdefault(rollout_id, {})[state] = n
    return counts


def rollout(pk: int) -> Rollout:
    return Rollout.objects.select_related("family", "version__family", "baseline__family", "created_by").get(pk=pk)


def latest_gate_decision(rollout: Rollout) -> RolloutDecision | None:
    """The newest decision that judged the gates: its evidence holds the install counts, either
    at the top (hold, halt, pause, complete) or under "gates" (advance)."""
    judged = Q(evidence__has_key="install") | Q(evidence__gates__has_key="install")
    return rollout.decisions.filter(judged).select_related("by").order_by("-at", "-id").first()


def decision_page(rollout: Rollout, number):
    decisions = rollout.decisions.select_related("by").order_by("-at", "-id")
    return BoundedCountPaginator(decisions, DECISIONS_PER_PAGE).get_page(number)


def _heavy(relation: str) -> list[str]:
    return [f"{relation}__{name}" for name in HEAVY_VERSION_FIELDS]
