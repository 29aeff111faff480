"""The quarantine: bounded, oldest out first, and it survives a restart."""

from __future__ import annotations

import numpy as np

from edge_client.quarantine import Quarantine
from edge_client.store import QUARANTINE_SAMPLE, Store


def add(quarantine, value, **kwargs):
    return quarantine.add(
        np.full(4, float(value)), label=value % 3, confidence=0.5, distance=float(value), reasons=["far"], **kwargs
    )


def test_it_never_holds_more_than_max_samples_and_evicts_the_oldest_first(tmp_path):
    quarantine = Quarantine(tmp_path, max_samples=5)
    for value in range(12):
        add(quarantine, value)
    assert len(quarantine) == 5
    assert [s.distance for s in quarantine.samples()] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert len(list(tmp_path.glob("q*.npz"))) == 5


def test_it_is_persisted_across_reopen(tmp_path):
    quarantine = Quarantine(tmp_path, max_samples=10)
    added = [add(quarantine, value, image=np.full((8, 8), value), event_id=f"event-{value}") for value in range(4)]
    quarantine.remove([added[1].id])

    reopened = Quarantine(tmp_path, max_samples=10)
    assert [s.id for s in reopened.samples()] == [added[i].id for i in (0, 2, 3)]
    for got, want in zip(reopened.samples(), [added[i] for i in (0, 2, 3)], strict=True):
        np.testing.assert_array_equal(got.features, want.features)
        np.testing.assert_array_equal(got.image, want.image)
        assert (got.label, got.reasons, got.event_id) == (want.label, want.reasons, want.event_id)
    assert add(reopened, 9).seq > added[-1].seq  # numbering continues, so order is kept


def test_reopening_with_a_smaller_bound_evicts_down_to_it_and_ignores_torn_temp_files(tmp_path):
    quarantine = Quarantine(tmp_path, max_samples=10)
    for value in range(6):
        add(quarantine, value)
    (tmp_path / ".tmp-deadbeef").write_bytes(b"half a sample")
    reopened = Quarantine(tmp_path, max_samples=3)
    assert [s.distance for s in reopened.samples()] == [3.0, 4.0, 5.0]
    assert not list(tmp_path.glob(".tmp-*"))


def test_images_are_dropped_when_keep_images_is_off(tmp_path):
    quarantine = Quarantine(tmp_path, keep_images=False)
    assert add(quarantine, 1, image=np.ones((8, 8))).image is None


def test_each_sample_also_goes_to_the_outbox_with_its_features_and_image(tmp_path):
    store = Store(tmp_path / "outbox.sqlite3")
    quarantine = Quarantine(tmp_path / "q", store=store, model_version="digits@2")
    sample = add(quarantine, 2, image=np.ones((8, 8)))
    item = store.get(sample.id)
    assert item.kind == QUARANTINE_SAMPLE
    assert item.payload["model_version"] == "digits@2" and item.payload["reasons"] == ["far"]
    assert sorted(store.attachments(sample.id)) == ["features.npy", "image.npy"]


def test_it_evicts_the_oldest_samples_to_stay_under_max_bytes(tmp_path):
    quarantine = Quarantine(tmp_path, max_samples=100, max_bytes=5000)
    for value in range(20):
        add(quarantine, value, image=np.full((8, 8), value))
    sizes = sum(path.stat().st_size for path in tmp_path.glob("q*.npz"))
    assert 0 < len(quarantine) < 20 and sizes <= 5000
    assert quarantine.samples()[-1].distance == 19.0
    assert len(Quarantine(tmp_path, max_samples=100, max_bytes=5000)) == len(quarantine)
