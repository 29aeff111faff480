"""Versioned state snapshots: atomic, bounded, and a rollback gives back identical predictions."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.detectors import build_detector
from edge_client.knn import KNN
from edge_client.state import StateError, StateManager
from edge_client.transforms import PCA, FeatureTransform, StandardScaler


@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)), rng.integers(3, size=60)
    transform = FeatureTransform([StandardScaler.fit(x), PCA.fit(x, n_components=4)])
    knn = KNN(k=3, max_size=80).fit(transform.transform(x), y)
    detectors = {"knn_distance": build_detector("knn_distance", min_samples=5)}
    for value in rng.random(20):
        detectors["knn_distance"].update(value)
    return transform, knn, detectors, rng


def predictions(knn, transform, queries):
    batch = knn.predict_batch(transform.transform(queries))
    return batch.labels, batch.probabilities, batch.distances


def test_a_snapshot_then_a_change_then_a_rollback_restores_identical_predictions(parts, tmp_path):
    transform, knn, detectors, rng = parts
    queries = rng.normal(size=(50, 6))
    expected = predictions(knn, transform, queries)
    manager = StateManager(tmp_path)
    version = manager.snapshot(knn, transform, detectors, {"note": "before"})

    for row in rng.normal(loc=2.0, size=(40, 4)):
        knn.add(row, 2)
    assert not np.array_equal(predictions(knn, transform, queries)[2], expected[2])

    snapshot = manager.restore(version)
    for got, want in zip(predictions(snapshot.knn, snapshot.transform, queries), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert snapshot.detectors["knn_distance"].to_state() == detectors["knn_distance"].to_state()
    assert snapshot.meta == {"note": "before"}


def test_it_keeps_only_the_last_n_versions(parts, tmp_path):
    transform, knn, detectors, _ = parts
    manager = StateManager(tmp_path, keep=3)
    numbers = [manager.snapshot(knn, transform, detectors) for _ in range(6)]
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert manager.versions() == [4, 5, 6]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"v00000{n}.{s}" for n in (4, 5, 6) for s in ("json", "npz")
    ]
    with pytest.raises(StateError):
        manager.restore(1)


def test_a_crash_between_writes_leaves_the_previous_version_loadable(parts, tmp_path):
    transform, knn, detectors, _ = parts
    manager = StateManager(tmp_path)
    good = manager.snapshot(knn, transform, detectors)
    # A cut during the next snapshot: a half-written temp file, and the npz of version 2 in place
    # without its JSON commit record; then a torn JSON for a version 3.
    (tmp_path / ".tmp-0123-v000002.npz").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "v000002.npz").write_bytes(b"garbage")
    (tmp_path / "v000003.json").write_bytes(b'{"format": 1, "versi')

    reopened = StateManager(tmp_path)
    assert reopened.versions() == [good]
    assert reopened.latest() == good
    np.testing.assert_array_equal(reopened.restore().knn.reference[0], knn.reference[0])
    assert reopened.snapshot(knn, transform, detectors) == 4  # torn numbers are never reused
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_npz_that_does_not_match_its_checksum_is_not_a_version(parts, tmp_path):
    transform, knn, detectors, _ = parts
    manager = StateManager(tmp_path)
    first, second = manager.snapshot(knn, transform), manager.snapshot(knn, transform)
    (tmp_path / f"v{second:06d}.npz").write_bytes((tmp_path / f"v{first:06d}.npz").read_bytes() + b"x")
    assert manager.versions() == [first]
    with pytest.raises(StateError, match="checksum"):
        manager.restore(second)


def test_restoring_with_nothing_saved_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="no saved state"):
        StateManager(tmp_path).restore()


def test_the_npz_loads_without_pickle(parts, tmp_path):
    transform, knn, _, _ = parts
    version = StateManager(tmp_path).snapshot(knn, None)
    with np.load(tmp_path / f"v{version:06d}.npz", allow_pickle=False) as arrays:
        assert all(arrays[key].dtype != object for key in arrays.files)
    assert StateManager(tmp_path).restore(version).transform is None
