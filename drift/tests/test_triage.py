"""Drift triage on constructed fleets: one device drifts, a group drifts, a model version drifts,
everyone drifts, or a few unrelated devices drift at once; events are grouped into incidents by time.

The standard fleet has 40 active cameras cam-00..cam-39: groups line-0..line-3 of 10 (line-0 and
line-1 at site-a, line-2 and line-3 at site-b), jetson and coral hardware alternating, and model
version v2 as a canary on every fifth camera (8 devices, two per group, four of each hardware).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import fisher_exact

from drift.triage import DeviceProfile, EventSignal, Kind, classify, fisher_exact_greater, group_incidents, triage

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
V2_CANARY = (4, 9, 14, 19, 24, 29, 34, 39)


def camera(index: int, **fields) -> DeviceProfile:
    profile = DeviceProfile(
        device_id=f"cam-{index:02d}",
        group=f"line-{index // 10}",
        location="site-a" if index < 20 else "site-b",
        hardware="jetson" if index % 2 == 0 else "coral",
        model_version="v2" if index in V2_CANARY else "v1",
    )
    return replace(profile, **fields)


def standard_fleet() -> list[DeviceProfile]:
    return [camera(index) for index in range(40)]


def drift_on(*indices: int, start: datetime = T0, every: timedelta = timedelta(minutes=1)) -> list[EventSignal]:
    return [
        EventSignal(f"ev-{n}", f"cam-{index:02d}", start + n * every, "knn_distance") for n, index in enumerate(indices)
    ]


def classify_on(*indices: int, fleet=None, **thresholds):
    return classify(drift_on(*indices), fleet or standard_fleet(), **thresholds)


def slice_row(classification, attribute, value) -> dict:
    [row] = [row for row in classification.evidence["slices"] if (row["attribute"], row["value"]) == (attribute, value)]
    return row


# Classification


def test_one_drifting_device_is_device_local():
    result = classify_on(17)

    assert result.kind == Kind.DEVICE_LOCAL == "device_local"
    assert result.slice is None
    assert result.evidence["drifting_devices"] == 1
    assert result.evidence["active_devices"] == 40
    assert result.evidence["rule"] == "device_local: exactly one device drifted"


def test_repeated_events_of_the_same_device_count_once():
    result = classify_on(17, 17, 17, 17, 17)

    assert result.kind == Kind.DEVICE_LOCAL
    assert result.evidence["drifting_devices"] == 1
    assert result.evidence["events"] == 5


def test_a_whole_group_drifting_is_a_cohort_of_that_group():
    result = classify_on(*range(20, 30))

    assert result.kind == Kind.COHORT
    assert result.slice == ("group", "line-2")
    chosen = result.evidence["slices"][0]
    assert chosen == {
        "attribute": "group",
        "value": "line-2",
        "drifting": 10,
        "size": 10,
        "coverage": 1.0,
        "concentration": 1.0,
        "rest_rate": 0.0,
        "p_value": pytest.approx(fisher_exact([[10, 0], [0, 30]], alternative="greater")[1]),
        "qualifies": True,
    }
    assert result.evidence["rule"].startswith("cohort: group=line-2 holds 10 of 10 drifting devices (100% >= 60%)")


def test_the_tightest_slice_wins_over_the_broader_one_that_contains_it():
    result = classify_on(*range(20, 30))

    site = slice_row(result, "location", "site-b")
    assert site["coverage"] == 1.0 and site["qualifies"]
    assert site["p_value"] > result.evidence["slices"][0]["p_value"]
    assert result.slice == ("group", "line-2")


def test_most_of_a_group_plus_a_stray_device_elsewhere_is_still_that_groups_cohort():
    result = classify_on(20, 21, 22, 23, 25, 26, 28, 3)

    assert result.kind == Kind.COHORT
    assert result.slice == ("group", "line-2")
    chosen = result.evidence["slices"][0]
    assert (chosen["drifting"], chosen["size"], chosen["coverage"]) == (7, 10, 7 / 8)
    assert chosen["rest_rate"] == 1 / 30


def test_one_model_version_drifting_across_groups_is_a_cohort_of_that_version():
    result = classify_on(*V2_CANARY)

    assert result.kind == Kind.COHORT
    assert result.slice == ("model_version", "v2")
    assert all(row["coverage"] <= 0.5 for row in result.evidence["slices"] if row["attribute"] != "model_version")


def test_eighty_percent_of_the_fleet_drifting_is_population():
    result = classify_on(*range(32))

    assert result.kind == Kind.POPULATION
    assert result.slice is None
    assert result.evidence["share"] == 0.8
    assert result.evidence["rule"] == "population: 32 of 40 active devices drifted (80% >= 50%)"


def test_everyone_drifting_is_population():
    assert classify_on(*range(40)).kind == Kind.POPULATION


def test_exactly_the_population_share_is_population():
    assert classify_on(*range(0, 40, 2)).kind == Kind.POPULATION


def test_three_unrelated_devices_in_different_slices_are_scattered():
    result = classify_on(0, 13, 26)

    assert result.kind == Kind.SCATTERED
    assert result.slice is None
    # All three run v1, but so do 32 of 40 devices: that explains nothing.
    v1 = slice_row(result, "model_version", "v1")
    assert (v1["coverage"], v1["size"], v1["qualifies"]) == (1.0, 32, False)
    assert v1["p_value"] == pytest.approx(0.5020, abs=1e-4)
    assert result.evidence["rule"].startswith("scattered: 3 devices drifted (8% < 50%)")


def test_two_devices_of_one_group_are_not_enough_evidence_in_a_fleet_of_forty_but_three_are():
    two, three = classify_on(20, 22), classify_on(20, 22, 24)

    assert two.kind == Kind.SCATTERED
    assert slice_row(two, "group", "line-2")["p_value"] == pytest.approx(45 / 780)
    assert three.kind == Kind.COHORT
    assert three.slice == ("group", "line-2")


def test_a_tie_between_slices_with_the_same_devices_goes_to_the_earlier_attribute():
    # line-0 is exactly the jetson cameras: both slices have the same numbers.
    fleet = [camera(index, hardware="jetson" if index < 10 else "coral") for index in range(40)]

    result = classify_on(*range(10), fleet=fleet)

    group, hardware = result.evidence["slices"][:2]
    assert (group["attribute"], hardware["attribute"]) == ("group", "hardware")
    assert group["p_value"] == hardware["p_value"] and group["coverage"] == hardware["coverage"]
    assert result.slice == ("group", "line-0")


def test_the_classification_does_not_depend_on_the_order_of_events_or_fleet():
    events, fleet = drift_on(*range(20, 30)), standard_fleet()
    expected = classify(events, fleet)
    rng = random.Random(7)

    for _ in range(5):
        rng.shuffle(events)
        rng.shuffle(fleet)
        assert classify(events, fleet) == expected


def test_an_inactive_device_does_not_count_in_the_denominator():
    spares = [camera(index, device_id=f"spare-{index}", active=False) for index in range(10)]

    result = classify_on(*range(20), fleet=standard_fleet() + spares)

    assert result.evidence["active_devices"] == 40
    assert result.kind == Kind.POPULATION


def test_an_inactive_device_that_drifted_still_counts_for_its_incident():
    fleet = [camera(index, active=index != 17) for index in range(40)]

    result = classify_on(17, 20, 21, fleet=fleet)

    assert result.evidence["drifting_devices"] == 3
    assert result.evidence["active_devices"] == 40


def test_a_slice_with_no_value_is_not_a_cohort():
    fleet = [camera(index, group=None if 20 <= index < 30 else f"line-{index // 10}") for index in range(40)]

    result = classify_on(*range(20, 30), fleet=fleet)

    assert ("group", None) not in {(row["attribute"], row["value"]) for row in result.evidence["slices"]}
    assert result.slice == ("location", "site-b")


def test_thresholds_change_the_decision():
    stray = (20, 21, 22, 23, 25, 26, 28, 3)

    assert classify_on(*stray, cohort_share=0.9).kind == Kind.SCATTERED
    assert classify_on(*range(20, 30), population_share=0.25).kind == Kind.POPULATION
    assert classify_on(20, 22, significance=0.1).slice == ("group", "line-2")
    assert classify_on(20, 22, 24, min_cohort_devices=4).kind == Kind.SCATTERED


def test_the_evidence_lists_the_thresholds_and_is_plain_json():
    result = classify_on(*range(20, 30))

    assert result.evidence["thresholds"] == {
        "population_share": 0.5,
        "cohort_share": 0.6,
        "min_cohort_devices": 2,
        "significance": 0.05,
    }
    assert result.evidence["detectors"] == ["knn_distance"]
    assert len(result.evidence["slices"]) == 5
    assert json.loads(json.dumps(result.evidence)) == result.evidence


def test_it_rejects_events_from_a_device_missing_from_the_fleet():
    events = drift_on(1) + [EventSignal("ev-x", "cam-99", T0, "knn_distance")]

    with pytest.raises(ValueError, match="cam-99"):
        classify(events, standard_fleet())


def test_it_rejects_an_empty_incident():
    with pytest.raises(ValueError, match="at least one event"):
        classify([], standard_fleet())


# Grouping into incidents


def test_events_three_hours_apart_are_two_incidents():
    first, second = drift_on(1, 2), drift_on(30, 31, start=T0 + 3 * HOUR)

    assert group_incidents(second + first, HOUR) == [first, second]


def test_events_twenty_minutes_apart_chain_into_one_incident_longer_than_the_window():
    events = drift_on(*range(10), every=timedelta(minutes=20))

    [incident] = group_incidents(events, HOUR)

    assert incident == events
    assert incident[-1].detected_at - incident[0].detected_at == 3 * HOUR


def test_events_exactly_one_window_apart_are_chained():
    assert len(group_incidents(drift_on(1, 2, every=HOUR), HOUR)) == 1


def test_events_at_the_same_instant_are_ordered_the_same_whatever_the_input_order():
    events = drift_on(5, 3, 8, every=timedelta(0))

    assert group_incidents(events, HOUR) == group_incidents(reversed(events), HOUR)
    assert [event.device_id for event in group_incidents(events, HOUR)[0]] == ["cam-03", "cam-05", "cam-08"]


def test_it_rejects_a_negative_window():
    with pytest.raises(ValueError, match="window"):
        group_incidents(drift_on(1), -HOUR)


def test_no_events_are_no_incidents():
    assert group_incidents([], HOUR) == []
    assert triage([], standard_fleet(), HOUR) == []


# End to end


def test_triage_separates_a_group_incident_from_a_later_single_device_one():
    morning = drift_on(*range(20, 30), every=timedelta(minutes=5))
    afternoon = drift_on(7, 7, 7, start=T0 + 5 * HOUR)

    group, single = triage(afternoon + morning, standard_fleet(), HOUR)

    assert group.classification.slice == ("group", "line-2")
    assert group.devices == tuple(f"cam-{index}" for index in range(20, 30))
    assert (group.start, group.end) == (T0, T0 + 45 * timedelta(minutes=1))
    assert group.events == tuple(morning)
    assert single.classification.kind == Kind.DEVICE_LOCAL
    assert single.devices == ("cam-07",)
    assert (single.start, single.end) == (T0 + 5 * HOUR, T0 + 5 * HOUR + timedelta(minutes=2))


def test_triage_passes_thresholds_to_the_classifier():
    [incident] = triage(drift_on(20, 22), standard_fleet(), HOUR, significance=0.1)

    assert incident.classification.kind == Kind.COHORT


# The Fisher exact test


@pytest.mark.parametrize(
    "table",
    [
        [[10, 0], [0, 30]],
        [[2, 8], [0, 30]],
        [[3, 29], [0, 8]],
        [[7, 3], [1, 29]],
        [[20, 0], [12, 8]],
        [[0, 5], [5, 0]],
        [[4, 4], [4, 4]],
        [[1, 0], [0, 0]],
        [[150, 850], [350, 8650]],
    ],
)
def test_the_fisher_p_value_equals_scipys(table):
    expected = fisher_exact(table, alternative="greater")[1]

    assert fisher_exact_greater(*table[0], *table[1]) == pytest.approx(expected, rel=1e-9)


def test_the_fisher_test_rejects_negative_cells():
    with pytest.raises(ValueError, match="negative"):
        fisher_exact_greater(1, -1, 0, 3)
