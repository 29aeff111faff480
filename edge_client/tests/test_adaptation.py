"""The heuristic adapter labels only compact, consistent groups; the tracker remembers each adaptation."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.adaptation import AdaptationTracker, HeuristicAdapter, leader_clusters, reference_distance_threshold
from edge_client.knn import KNN
from edge_client.quarantine import Quarantine

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


@pytest.fixture
def knn():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    return KNN(k=5, max_size=100).fit(CENTRES[labels] + rng.normal(scale=0.5, size=(60, 2)), labels)


def adapter_for(knn):
    return HeuristicAdapter(knn, radius=2.0, max_spread=1.0, min_group_size=5, min_agreement=0.8)


def fill(quarantine, rows):
    return [quarantine.add(row, label=0, confidence=1.0, distance=5.0, reasons=["far"]) for row in rows]


def test_it_pseudo_labels_a_compact_cluster_that_sits_near_one_class(knn, tmp_path):
    quarantine = Quarantine(tmp_path)
    rng = np.random.default_rng(1)
    fill(quarantine, np.array([10.8, 1.0]) + rng.normal(scale=0.2, size=(12, 2)))
    size = knn.size

    decisions = adapter_for(knn).adapt(quarantine)

    assert [(d.accepted, d.label, d.size) for d in decisions] == [(True, 1, 12)]
    assert knn.size == size + 12 and len(quarantine) == 0
    assert np.sum(knn.reference[1] == 1) == 32


def test_it_refuses_a_spread_group(knn, tmp_path):
    quarantine = Quarantine(tmp_path)
    rng = np.random.default_rng(2)
    fill(quarantine, np.array([10.0, 0.0]) + rng.uniform(-1.9, 1.9, size=(12, 2)))
    adapter = HeuristicAdapter(knn, radius=4.0, max_spread=0.5)
    decisions = adapter.adapt(quarantine)
    assert decisions and not any(d.accepted for d in decisions)
    assert any("spread" in d.reason for d in decisions)
    assert len(quarantine) == 12 and knn.size == 60


def test_it_refuses_a_compact_group_whose_neighbours_disagree(knn, tmp_path):
    quarantine = Quarantine(tmp_path)
    rng = np.random.default_rng(3)
    # Half way between class 0 and class 1: the KNN answers both.
    rows = np.vstack([np.array([4.6, 0.0]), np.array([5.4, 0.0])]).repeat(6, axis=0)
    fill(quarantine, rows + rng.normal(scale=0.05, size=rows.shape))
    decisions = adapter_for(knn).adapt(quarantine)
    assert [d.accepted for d in decisions] == [False]
    assert "agree" in decisions[0].reason
    assert len(quarantine) == 12 and knn.size == 60


def test_it_refuses_a_group_too_small_to_be_a_concept(knn, tmp_path):
    quarantine = Quarantine(tmp_path)
    fill(quarantine, np.array([[10.5, 0.5], [10.6, 0.4]]))
    assert [d.reason for d in adapter_for(knn).adapt(quarantine)] == ["only 2 samples (< 5)"]


def test_leader_clusters_separate_groups_farther_apart_than_the_radius():
    rows = np.vstack([np.zeros((3, 2)), np.full((3, 2), 5.0)])
    assert leader_clusters(rows, radius=1.0).tolist() == [0, 0, 0, 1, 1, 1]


def test_the_far_threshold_lies_above_the_references_own_neighbour_distances(knn):
    threshold = reference_distance_threshold(knn)
    x, _ = knn.reference
    assert np.mean(knn.predict_batch(x).distances.mean(axis=1) < threshold) > 0.99
    assert knn.predict(np.array([5.0, 5.0])).distances.mean() > threshold


def test_the_tracker_records_every_adaptation_and_survives_a_restart(knn, tmp_path):
    quarantine = Quarantine(tmp_path / "q")
    fill(quarantine, np.array([0.0, 10.5]) + np.random.default_rng(4).normal(scale=0.2, size=(6, 2)))
    [decision] = adapter_for(knn).adapt(quarantine)
    tracker = AdaptationTracker(tmp_path / "adaptations.json")
    entry = tracker.record(decision, version_before=7)

    reopened = AdaptationTracker(tmp_path / "adaptations.json")
    assert reopened.last() == entry
    assert (entry.label, entry.count, entry.version_before) == (2, 6, 7) and entry.at > 0
    reopened.mark_rolled_back(entry)
    assert AdaptationTracker(tmp_path / "adaptations.json").last() is None
