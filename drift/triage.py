"""Fleet-aware drift triage: which drift events belong together, and how far across the fleet they reach.

Pure decision logic, no Django: the persistence layer builds ``DeviceProfile`` and ``EventSignal``
values from its rows, calls ``triage`` and stores what comes out. The classification and its
``evidence`` are shown to the operator and later drive the retraining policy.

How to read a result
--------------------

1. **Incidents.** Events are sorted by time; an event detected within ``window`` of the previous
   one joins that incident (single linkage). A slow wave of events 20 minutes apart therefore stays
   one incident even when it lasts longer than the window, while two bursts 3 hours apart with a
   1-hour window are two incidents.

2. **Counting.** An incident's drifting devices are the distinct devices behind its events; a device
   that reports ten times counts once. They are compared with the *active fleet*: the devices
   marked active, plus any device that drifted in the incident (it was evidently running then,
   even if it has been switched off since, say because its lens broke). Inactive devices that did
   not drift are not counted, so a warehouse of spare cameras does not dilute the shares.

3. **Classification**, the first rule that matches:

   - ``device_local`` -- exactly one device drifted. Look at that device: a dirty lens, a broken
     sensor, a camera knocked out of place.
   - ``population`` -- more than one device, and at least ``population_share`` (default 50 %) of
     the active fleet. The world changed for everyone; the model needs retraining for all.
   - ``cohort`` -- one *slice* of the fleet explains the drift. A slice is an attribute value:
     a group, location, hardware kind or model version (devices with no value are not a slice).
     A slice qualifies when all three hold:

     * coverage >= ``cohort_share`` (default 60 %): most drifting devices are in it;
     * at least ``min_cohort_devices`` (default 2) of its devices drifted;
     * its devices drift clearly more often than the rest of the fleet: one-sided Fisher exact
       test, p < ``significance`` (default 0.05). This is what keeps a slice nearly every device
       belongs to (the majority model version, the big site) from "explaining" drift merely by
       being big, and it needs enough devices: in a fleet of 40 with groups of 10, two drifting
       devices of one group are not evidence (p = 0.058), three are (p = 0.012).

     When several slices qualify the lowest p wins, then the higher coverage, then the attribute
     order group, location, hardware, model_version, then the value's name -- so the tightest
     slice wins over a broader one that contains it (a group over its site).
   - ``scattered`` -- several devices drifted, too few for ``population`` and not explained by any
     slice: unrelated local faults that happen to coincide. This is not a cohort with no slice,
     because the policies differ: a cohort is retrained or rolled back as a slice, while scattered
     devices are inspected one by one, like several ``device_local`` incidents.

The Fisher test compares the slice (n devices, a of them drifting) with the rest of the fleet
(N - n devices, K - a drifting) in the 2x2 table [[a, n - a], [K - a, N - n - K + a]]. Its p-value
is the chance that, if the K drifting devices had been picked at random among the N active ones,
the slice would hold a or more of them (the upper tail of a hypergeometric distribution). It is
computed exactly with integers; it equals ``scipy.stats.fisher_exact(table, alternative="greater")``.

Every classification carries ``evidence``: the counts and share, the rule that decided with its
numbers, the thresholds used and the best slice candidates (attribute, value, drifting, size,
coverage, concentration = share of the slice drifting, rest_rate = share of the rest of the fleet
drifting, p_value, qualifies), the chosen slice first. It is plain JSON.

>>> from datetime import UTC, datetime, timedelta
>>> fleet = [DeviceProfile(f"cam-{i}", f"line-{i // 4}", "site-a", "jetson", "v1") for i in range(12)]
>>> at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
>>> events = [EventSignal(f"ev-{i}", f"cam-{i}", at + timedelta(minutes=i), "knn_distance") for i in (4, 5, 6)]
>>> [incident] = triage(events, fleet, window=timedelta(hours=1))
>>> print(incident.classification.kind, incident.classification.slice)
cohort ('group', 'line-1')
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum

ATTRIBUTES = ("group", "location", "hardware", "model_version")
# Enough rows for the operator to see the runners-up, not a dump of every slice.
TOP_CANDIDATES = 5


class Kind(StrEnum):
    DEVICE_LOCAL = "device_local"
    COHORT = "cohort"
    POPULATION = "population"
    SCATTERED = "scattered"


@dataclass(frozen=True)
class DeviceProfile:
    device_id: Hashable
    group: str | None
    location: str | None
    hardware: str | None
    model_version: str | None
    active: bool = True


@dataclass(frozen=True)
class EventSignal:
    event_id: Hashable
    device_id: Hashable
    detected_at: datetime
    detector: str


@dataclass(frozen=True)
class Thresholds:
    population_share: float = 0.5
    cohort_share: float = 0.6
    min_cohort_devices: int = 2
    significance: float = 0.05


@dataclass(frozen=True)
class SliceStats:
    attribute: str
    value: str
    drifting: int
    size: int
    coverage: float
    concentration: float
    rest_rate: float | None
    p_value: float
    qualifies: bool


@dataclass(frozen=True)
class Classification:
    kind: Kind
    slice: tuple[str, str] | None
    evidence: dict


@dataclass(frozen=True)
class Incident:
    events: tuple[EventSignal, ...]
    devices: tuple[Hashable, ...]
    start: datetime
    end: datetime
    classification: Classification


def triage(
    events: Iterable[EventSignal], fleet: Iterable[DeviceProfile], window: timedelta, **thresholds
) -> list[Incident]:
    """Group ``events`` into incidents and classify each against ``fleet`` (see the module docstring).

    ``thresholds`` are ``classify``'s keyword arguments.
    """
    fleet = tuple(fleet)  # read once per incident
    return [_incident(group, fleet, thresholds) for group in group_incidents(events, window)]


def _incident(events: list[EventSignal], fleet: Sequence[DeviceProfile], thresholds: dict) -> Incident:
    return Incident(
        events=tuple(events),
        devices=tuple(sorted(_drifting_ids(events))),
        start=events[0].detected_at,
        end=events[-1].detected_at,
        classification=classify(events, fleet, **thresholds),
    )


def group_incidents(events: Iterable[EventSignal], window: timedelta) -> list[list[EventSignal]]:
    """Split events into runs where each event is within ``window`` of the previous one, in time order."""
    if window < timedelta(0):
        raise ValueError(f"window must not be negative, got {window}")
    incidents: list[list[EventSignal]] = []
    for event in sorted(events, key=_event_order):
        if incidents and event.detected_at - incidents[-1][-1].detected_at <= window:
            incidents[-1].append(event)
        else:
            incidents.append([event])
    return incidents


def _event_order(event: EventSignal) -> tuple:
    # Events at the same instant still sort one way, whatever order the caller read them in.
    return (event.detected_at, str(event.device_id), str(event.event_id))


def classify(
    incident_events: Iterable[EventSignal],
    fleet: Iterable[DeviceProfile],
    *,
    population_share: float = 0.5,
    cohort_share: float = 0.6,
    min_cohort_devices: int = 2,
    significance: float = 0.05,
) -> Classification:
    """Classify one incident as device_local, population, cohort or scattered (see the module docstring)."""
    thresholds = Thresholds(population_share, cohort_share, min_cohort_devices, significance)
    incident_events = list(incident_events)
    drifting_ids = _drifting_ids(incident_events)
    if not drifting_ids:
        raise ValueError("an incident needs at least one event")
    active, drifting = _active_fleet(fleet, drifting_ids)
    slices = _ranked_slices(drifting, active, thresholds)
    kind, chosen, rule = _decide(len(drifting), len(active), slices, thresholds)
    evidence = _evidence(incident_events, len(drifting), len(active), slices, rule, thresholds)
    return Classification(kind, (chosen.attribute, chosen.value) if chosen else None, evidence)


def _drifting_ids(events: Iterable[EventSignal]) -> set:
    return {event.device_id for event in events}


def _active_fleet(fleet: Iterable[DeviceProfile], drifting_ids: set) -> tuple[list, list]:
    """The denominator (active devices and any device that drifted) and the drifting devices' profiles."""
    profiles = {profile.device_id: profile for profile in fleet}
    unknown = drifting_ids - profiles.keys()
    if unknown:
        raise ValueError(f"drift events from devices missing from the fleet: {sorted(map(str, unknown))}")
    active = [profile for profile in profiles.values() if profile.active or profile.device_id in drifting_ids]
    return active, [profiles[device_id] for device_id in drifting_ids]


def _ranked_slices(drifting: list, active: list, thresholds: Thresholds) -> list[SliceStats]:
    stats = []
    for attribute in ATTRIBUTES:
        sizes = Counter(getattr(profile, attribute) for profile in active)
        hits = Counter(getattr(profile, attribute) for profile in drifting)
        for value in hits.keys() - {None}:
            counts = (hits[value], sizes[value], len(drifting), len(active))
            stats.append(_slice_stats(attribute, value, *counts, thresholds))
    return sorted(stats, key=_slice_rank)


def _slice_rank(stats: SliceStats) -> tuple:
    # Qualifying slices first, so the chosen one heads the operator's table.
    return (not stats.qualifies, stats.p_value, -stats.coverage, ATTRIBUTES.index(stats.attribute), str(stats.value))


def _slice_stats(attribute, value, drifting, size, total_drifting, total, thresholds: Thresholds) -> SliceStats:
    rest = total - size
    table = (drifting, size - drifting, total_drifting - drifting, rest - (total_drifting - drifting))
    coverage, p_value = drifting / total_drifting, fisher_exact_greater(*table)
    qualifies = (
        coverage >= thresholds.cohort_share
        and drifting >= thresholds.min_cohort_devices
        and p_value < thresholds.significance
    )
    rest_rate = (total_drifting - drifting) / rest if rest else None
    return SliceStats(attribute, value, drifting, size, coverage, drifting / size, rest_rate, p_value, qualifies)


def _decide(drifting: int, active: int, slices: list[SliceStats], thresholds: Thresholds) -> tuple:
    """(kind, chosen slice or None, the rule that decided, in words)."""
    share = drifting / active
    if drifting == 1:
        return Kind.DEVICE_LOCAL, None, "device_local: exactly one device drifted"
    if share >= thresholds.population_share:
        rule = f"population: {drifting} of {active} active devices drifted ({share:.0%}"
        return Kind.POPULATION, None, f"{rule} >= {thresholds.population_share:.0%})"
    if slices and slices[0].qualifies:
        return Kind.COHORT, slices[0], _cohort_rule(slices[0], drifting, thresholds)
    rule = f"scattered: {drifting} devices drifted ({share:.0%} < {thresholds.population_share:.0%})"
    return Kind.SCATTERED, None, f"{rule} and no group, location, hardware or model version explains them"


def _cohort_rule(chosen: SliceStats, drifting: int, thresholds: Thresholds) -> str:
    rest_rate = "no other devices" if chosen.rest_rate is None else f"{chosen.rest_rate:.0%} of the rest"
    return (
        f"cohort: {chosen.attribute}={chosen.value} holds {chosen.drifting} of {drifting} drifting devices "
        f"({chosen.coverage:.0%} >= {thresholds.cohort_share:.0%}); {chosen.concentration:.0%} of its "
        f"{chosen.size} devices drifted against {rest_rate} (Fisher p={chosen.p_value:.2g} < {thresholds.significance})"
    )


def _evidence(events: list, drifting: int, active: int, slices: list, rule: str, thresholds: Thresholds) -> dict:
    return {
        "drifting_devices": drifting,
        "active_devices": active,
        "share": drifting / active,
        "events": len(events),
        "detectors": sorted({event.detector for event in events}),
        "rule": rule,
        "thresholds": asdict(thresholds),
        "slices": [asdict(stats) for stats in slices[:TOP_CANDIDATES]],
    }


def fisher_exact_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided (greater) Fisher exact p-value of the 2x2 table [[a, b], [c, d]].

    The chance of a top-left cell of ``a`` or more among tables with the same margins: the upper
    tail of the hypergeometric distribution, summed exactly with integers.

    >>> fisher_exact_greater(10, 0, 0, 30) == 1 / math.comb(40, 10)
    True
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"table cells must not be negative: {[[a, b], [c, d]]}")
    row, column, total = a + b, a + c, a + b + c + d
    term = math.comb(column, a) * math.comb(total - column, row - a)
    tail = 0
    for x in range(a, min(row, column)):
        tail += term
        # C(column, x+1) * C(total-column, row-x-1) from the previous term; the division is exact.
        term = term * (column - x) * (row - x) // ((x + 1) * (total - column - row + x + 1))
    return (tail + term) / math.comb(total, row)
