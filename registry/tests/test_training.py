"""Training from a snapshot: features through the shipped extractor from the images devices
ship, the strategies' training sets, the held-out and drift sets, the edge-client model that
ships, and the decision against the champion."""

from __future__ import annotations

import io
import itertools
import json
import re
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone
from PIL import Image, PngImagePlugin

from devices.ingest.archive import load_npy
from drift.services import render_png
from edge_client import datagen
from edge_client.extractors import TFLiteExtractor, shipped_model_paths
from edge_client.knn import KNN
from edge_client.pipeline import SHIPPED_REFERENCE, load_bundle
from edge_client.transforms import FeatureTransform
from labeling.models import Label, LabelOrigin, LabelTask, ReviewStatus, TaskSource, TaskStatus
from labeling.snapshots import create_snapshot
from labeling.tests.factories import DIGITS, digits
from registry import training
from registry.models import Strategy
from registry.tests.factories import policy
from registry.training import TrainingError, TrainingSettings

pytestmark = pytest.mark.django_db

_keys = itertools.count()
ROTATED = datagen.DriftSchedule("abrupt", onset=0)


# --- Builders ---------------------------------------------------------------------------------


def device_png(image: np.ndarray) -> bytes:
    """What the server stores for a quarantined sample's image: the device sends its float32
    input as image.npy, the drift app renders it to a PNG."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(image, dtype=np.float32), allow_pickle=False)  # edge_client.quarantine._npy
    return render_png(load_npy(buffer.getvalue(), "image.npy"), "image.npy")


def labeled(images, labels, *, source=TaskSource.QUARANTINE, days_ago=1, encode=device_png) -> list[LabelTask]:
    """Tasks with their image in the drift-images storage and one label each, given ``days_ago``.
    ``encode=None`` leaves a task without an image."""
    class_set, when = digits(), timezone.now() - timedelta(days=days_ago)
    tasks = []
    for image, label in zip(images, labels, strict=True):
        key = f"train/{next(_keys)}.png" if encode is not None else ""
        if key:
            storages["drift_images"].save(key, ContentFile(encode(image)))
        tasks.append(
            LabelTask(
                key=f"training-test:{key or next(_keys)}",
                source=source,
                class_set=class_set,
                status=TaskStatus.DONE,
                image_area="drift_images" if key else "",
                image_key=key,
                created=when,
            )
        )
    tasks = LabelTask.objects.bulk_create(tasks)
    Label.objects.bulk_create(
        Label(task=task, value=str(label), origin=LabelOrigin.OPERATOR, review=ReviewStatus.NOT_NEEDED, created=when)
        for task, label in zip(tasks, labels, strict=True)
    )
    return tasks


def stream(n, shift=None, amount=0.0, seed=0):
    schedule = ROTATED if shift else datagen.STATIONARY
    images, labels, _ = datagen.collect(datagen.image_stream(n, shift, amount, schedule, split="all", seed=seed))
    return images, labels


def shipped_champion() -> SimpleNamespace:
    """The reference the edge client ships, as registry.versions.load_model would give it."""
    transform, knn = load_bundle(SHIPPED_REFERENCE)
    return SimpleNamespace(transform=transform, knn=knn, classes=list(DIGITS))


def quiet(*_):
    return None


@pytest.fixture
def rotated_snapshot():
    """Digits turned a quarter: what a camera mounted sideways sends. The shipped model never saw them."""
    labeled(*stream(300, "rotation", 90.0, seed=1), source=TaskSource.QUARANTINE)
    labeled(*stream(60, "rotation", 90.0, seed=2), source=TaskSource.UNCERTAIN)
    return create_snapshot(digits())


# --- Features ---------------------------------------------------------------------------------


@pytest.mark.parametrize("brightness", [0.0, 6.0], ids=["as shipped", "brightness shifted"])
def test_server_extraction_of_a_stored_sample_gives_the_features_the_device_computed(brightness):
    images, labels = stream(40, seed=3)
    images = np.stack([datagen.adjust_brightness(image, brightness) for image in images]) if brightness else images
    device = TFLiteExtractor(*shipped_model_paths())  # a device's own interpreter, one image per call
    on_device = np.stack([device.extract(image)[1] for image in images])
    tasks = labeled(images, labels)

    on_server = training.extract_features(np.stack([training.read_input(t.image_area, t.image_key) for t in tasks]))

    # render_png names the range it stretched: a shift the device saw is what training sees.
    error = np.linalg.norm(on_server - on_device, axis=1) / np.linalg.norm(on_device, axis=1)
    assert error.max() < 0.01  # 8-bit rounding of the PNG, nothing more
    champion = shipped_champion()
    assert (
        training.predict_labels(champion, on_server, DIGITS) == training.predict_labels(champion, on_device, DIGITS)
    ).all()


def test_a_stored_array_or_a_png_that_names_its_range_is_read_back_exactly():
    image = datagen.adjust_brightness(stream(1, seed=4)[0][0], 6.0)  # not full range: min 6
    expected = training.extract_features(image[np.newaxis])
    array = io.BytesIO()
    np.save(array, image.astype(np.float32))
    png = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_text(training.RANGE_TEXT_KEY, f"{image.min()} {image.max()}")
    scaled = (image - image.min()) * (255 / (image.max() - image.min()))
    Image.fromarray(np.rint(scaled).astype(np.uint8)).save(png, format="PNG", pnginfo=text)

    from_array = training.decode_image(array.getvalue(), "s/1.image.npy")
    from_png = training.decode_image(png.getvalue(), "s/1.png")

    np.testing.assert_allclose(training.extract_features(from_array[np.newaxis]), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(from_png - image).max() <= 0.5 * (image.max() - image.min()) / 255 + 1e-9


def test_items_without_a_readable_image_are_skipped_and_counted():
    images, labels = stream(60, seed=5)
    labeled(images, labels)
    labeled(images[:3], labels[:3], encode=None)  # no image at all
    broken = labeled(images[:2], labels[:2], encode=lambda image: b"not an image")
    gone = labeled(images[:1], labels[:1])
    storages["drift_images"].delete(gone[0].image_key)
    snapshot = create_snapshot(digits())

    result = training.train(snapshot, settings=TrainingSettings(strategy=Strategy.FULL), progress=quiet)

    assert snapshot.item_count == 66
    assert result.metrics["samples"]["skipped_no_image"] == 3 + len(broken) + 1
    assert result.metrics["samples"]["items"] == 66


# --- Strategies and splits ----------------------------------------------------------------------


@pytest.fixture
def old_and_recent():
    """40 items labeled 60 days before the snapshot, 30 labeled 2 days before."""
    old = labeled(*stream(40, seed=6), days_ago=60)
    recent = labeled(*stream(30, "rotation", 90.0, seed=7), days_ago=2)
    return create_snapshot(digits()), {t.pk for t in old}, {t.pk for t in recent}


def chosen(snapshot, **fields):
    data = training.build_dataset(snapshot)
    split = training.split_dataset(data, TrainingSettings(window_days=30, **fields))
    return data, split, set(data.task_ids[split.train].tolist()), set(data.task_ids[split.holdout].tolist())


def test_full_trains_on_every_item_not_held_out(old_and_recent):
    snapshot, old, recent = old_and_recent
    _, split, train, holdout = chosen(snapshot, strategy=Strategy.FULL)

    assert train | holdout == old | recent and not train & holdout
    assert len(split.replayed) == 0


def test_window_trains_only_on_items_labeled_within_the_window(old_and_recent):
    snapshot, old, recent = old_and_recent
    _, split, train, holdout = chosen(snapshot, strategy=Strategy.SLIDING_WINDOW)

    assert train == recent - holdout
    assert split.counts == {"recent": len(train), "older": 0, "shipped": 0}


def test_replay_adds_a_share_of_older_items_and_shipped_digits_the_same_way_for_a_seed(old_and_recent):
    snapshot, old, recent = old_and_recent
    data, split, train, holdout = chosen(snapshot, strategy=Strategy.REPLAY, replay_share=2.0)
    again = chosen(snapshot, strategy=Strategy.REPLAY, replay_share=2.0)[1]
    other = chosen(snapshot, strategy=Strategy.REPLAY, replay_share=2.0, seed=1)[1]

    recent_trained = recent - holdout
    assert recent_trained <= train and train - recent_trained <= old
    assert split.counts["older"] == len(train - recent_trained)
    assert split.counts["older"] + split.counts["shipped"] == 2 * len(recent_trained)
    assert split.counts["shipped"] > 0 and len(split.replayed) == split.counts["shipped"]
    np.testing.assert_array_equal(split.replayed, again.replayed)
    assert not np.array_equal(split.replayed, other.replayed)


def test_the_label_time_is_when_the_item_was_labeled(old_and_recent):
    snapshot, old, recent = old_and_recent
    data = training.build_dataset(snapshot)

    age_days = (data.snapshot_time - data.labeled_at) / 86400
    is_old = np.isin(data.task_ids, list(old))
    assert (age_days[is_old] > 59).all() and (age_days[~is_old] < 3).all()


def test_the_held_out_set_holds_a_share_of_every_class_and_the_shipped_test_split(old_and_recent):
    snapshot, *_ = old_and_recent
    data, split, train, holdout = chosen(snapshot, strategy=Strategy.FULL, holdout_share=0.2)
    heldout = split.heldout(data)

    for label in np.unique(data.labels):
        members = (data.labels == label).sum()
        if members >= 2:
            assert 1 <= (data.labels[split.holdout] == label).sum() < members
    assert len(heldout.labels) == len(split.holdout) + len(data.shipped.test_labels) == len(split.holdout) + 450


def test_a_window_with_nothing_recent_cannot_be_trained():
    labeled(*stream(30, seed=8), days_ago=90)
    snapshot = create_snapshot(digits())

    with pytest.raises(TrainingError, match="labeled in the 30 days"):
        training.train(snapshot, settings=TrainingSettings(strategy=Strategy.SLIDING_WINDOW), progress=quiet)


def test_a_training_set_of_one_class_cannot_be_trained():
    images, labels = stream(80, seed=9)
    labeled(images[labels == 3], labels[labels == 3])
    snapshot = create_snapshot(digits())

    with pytest.raises(TrainingError, match=r"only one class \('3'\)"):
        training.train(snapshot, settings=TrainingSettings(strategy=Strategy.FULL), progress=quiet)


def test_a_snapshot_without_usable_images_cannot_be_trained():
    labeled(*stream(10, seed=10), encode=None)
    snapshot = create_snapshot(digits())

    with pytest.raises(TrainingError, match="None of the snapshot's 10 items can be used: 10 have no readable image"):
        training.train(snapshot, settings=TrainingSettings(strategy=Strategy.FULL), progress=quiet)


def test_a_snapshot_too_small_to_cross_validate_trains_on_the_first_setting():
    images, labels = stream(200, seed=12)
    firsts = [np.flatnonzero(labels == digit)[:2] for digit in range(10)]
    labeled(images[np.concatenate(firsts)], labels[np.concatenate(firsts)])
    snapshot = create_snapshot(digits())

    result = training.train(snapshot, settings=TrainingSettings(strategy=Strategy.FULL), progress=quiet)

    assert result.metrics["search"] == [{"n_components": 10, "k": 3, "weights": "uniform", "score": None}]
    assert (result.params["n_components"], result.knn.size) == (10, 10)
    assert result.metrics["samples"]["holdout_snapshot"] == 10


@pytest.mark.parametrize(
    "search",
    [{"k": [0]}, {"n_components": "many"}, {"weights": ["cosine"]}, {"max_references": 1}, ["k"]],
)
def test_a_bad_search_grid_is_refused_before_any_work(search):
    with pytest.raises(TrainingError, match="search"):
        training.search_grid(search)


def test_settings_come_from_the_policy_or_the_defaults():
    rule = policy(strategy=Strategy.SLIDING_WINDOW, window_days=7, replay_share=0.3, promotion_margin=0.05)
    rule.search = {"k": [7]}

    assert TrainingSettings.from_policy(None) == TrainingSettings()
    assert TrainingSettings.from_policy(rule) == TrainingSettings(
        strategy="window", window_days=7, replay_share=0.3, promotion_margin=0.05, search={"k": [7]}
    )


# --- The model that ships -----------------------------------------------------------------------


def test_the_shipped_objects_predict_as_scikit_learn_does():
    images, labels = stream(400, "rotation", 30.0, seed=11)
    x = training.extract_features(images).astype(np.float64)
    fit, check = slice(0, 300), slice(300, 400)
    chosen_setting = {"n_components": 16, "k": 5, "weights": "distance"}

    fitted = training.fit_candidate(x[fit], labels[fit], chosen_setting, 120, 10, seed=0)

    edge = fitted.knn.predict_batch(fitted.transform.transform(x[check])).labels
    assert (edge == fitted.sklearn.predict(x[check])).mean() >= 0.98
    assert (fitted.knn.size, fitted.knn.max_size, fitted.transform.output_dim) == (120, 120, 16)


def test_the_evaluation_is_the_edge_client_objects_on_the_held_out_set(rotated_snapshot):
    settings = TrainingSettings(strategy=Strategy.REPLAY, seed=3)
    result = training.train(rotated_snapshot, champion=shipped_champion(), settings=settings, progress=quiet)
    data = training.build_dataset(rotated_snapshot)
    heldout = training.split_dataset(data, settings).heldout(data)

    # What a device does with the bundle: the transform and KNN rebuilt from their wire formats.
    transform = FeatureTransform.from_params(result.transform.to_params())
    knn = KNN.from_state(result.knn.to_state())
    predicted = knn.predict_batch(transform.transform(heldout.features)).labels
    assert result.metrics["candidate"]["holdout_accuracy"] == pytest.approx((predicted == heldout.labels).mean())
    assert result.metrics["samples"]["holdout"] == len(heldout.labels)
    assert result.metrics["samples"]["drift"] == heldout.drift.sum() > 0
    assert (result.feature_dim, result.classes) == (64, DIGITS)
    assert {"n_components", "k", "weights", "strategy", "train_counts"} <= set(result.params)
    assert len(result.metrics["search"]) == 4
    # Stored as they are in TrainingJob.params / .result (JSON fields).
    assert json.loads(json.dumps([result.params, result.metrics])) == [result.params, result.metrics]


def test_drift_set_is_the_held_out_items_of_drift_and_quarantine_tasks(rotated_snapshot):
    data = training.build_dataset(rotated_snapshot)
    split = training.split_dataset(data, TrainingSettings())
    sources = dict(LabelTask.objects.values_list("pk", "source"))

    drift_ids = data.task_ids[split.holdout][data.drift[split.holdout]]
    expected = [t for t in data.task_ids[split.holdout] if sources[t] in (TaskSource.DRIFT, TaskSource.QUARANTINE)]
    assert sorted(drift_ids.tolist()) == sorted(expected) and len(expected) < len(split.holdout)


# --- The decision ---------------------------------------------------------------------------------


def test_a_candidate_trained_on_the_shift_beats_a_champion_that_never_saw_it(rotated_snapshot):
    stages = []

    result = training.train(
        rotated_snapshot,
        champion=shipped_champion(),
        settings=TrainingSettings(strategy=Strategy.REPLAY),
        progress=lambda fraction, stage: stages.append((fraction, stage)),
    )

    candidate, champion = result.metrics["candidate"], result.metrics["champion"]
    assert result.promote, result.reason
    assert candidate["drift_accuracy"] > champion["drift_accuracy"] + 0.3
    assert candidate["holdout_accuracy"] >= champion["holdout_accuracy"] + 0.01
    assert re.fullmatch(
        r"candidate 0\.\d{3} vs champion 0\.\d{3} on \d+ held-out samples: gain 0\.\d{3} >= margin 0\.010; "
        r"drift set candidate \d\.\d{3} >= champion 0\.\d{3} on \d+ samples",
        result.reason,
    )
    assert list(dict.fromkeys(stage for _, stage in stages)) == ["features", "search", "fit", "evaluate"]
    assert [f for f, _ in stages] == sorted(f for f, _ in stages)


def test_a_gain_below_the_margin_archives_with_the_numbers(rotated_snapshot):
    result = training.train(
        rotated_snapshot,
        champion=shipped_champion(),
        settings=TrainingSettings(strategy=Strategy.REPLAY, promotion_margin=0.9),
        progress=quiet,
    )

    candidate, champion = result.metrics["candidate"], result.metrics["champion"]
    assert not result.promote
    expected = (
        f"candidate {candidate['holdout_accuracy']:.3f} vs champion {champion['holdout_accuracy']:.3f} "
        f"on {candidate['holdout_samples']} held-out samples: "
        f"gain {candidate['holdout_accuracy'] - champion['holdout_accuracy']:.3f} < margin 0.900"
    )
    assert result.reason.startswith(expected)


def test_a_candidate_worse_on_the_drift_set_is_archived_whatever_its_gain():
    candidate = {"holdout_accuracy": 0.95, "holdout_samples": 500, "drift_accuracy": 0.6, "drift_samples": 40}
    champion = {"holdout_accuracy": 0.90, "holdout_samples": 500, "drift_accuracy": 0.7, "drift_samples": 40}

    promote, reason = training.decide(candidate, champion, TrainingSettings())

    assert not promote
    assert reason.endswith("drift set candidate 0.600 < champion 0.700 on 40 samples")


def test_without_a_champion_the_candidate_needs_the_minimum_accuracy(rotated_snapshot):
    result = training.train(rotated_snapshot, champion=None, settings=TrainingSettings(), progress=quiet)
    strict = training.train(rotated_snapshot, settings=TrainingSettings(min_accuracy=0.9999), progress=quiet)

    assert result.promote and result.metrics["champion"] is None
    assert re.fullmatch(r"no champion: candidate 0\.\d{3} on \d+ held-out samples >= minimum 0\.500", result.reason)
    assert not strict.promote and "< minimum 1.000" in strict.reason


def champion_of(classes) -> SimpleNamespace:
    """A champion fitted on the shipped training digits of ``classes`` only (as a demo seeds one)."""
    digits_sample = datagen.load_digits_sample()
    train = np.setdiff1d(np.arange(len(digits_sample.labels)), digits_sample.test_index)
    train = train[np.isin(digits_sample.labels[train], list(classes))]
    x = training.extract_features(digits_sample.images[train].astype(np.float64))
    fitted = training.fit_candidate(
        x, digits_sample.labels[train], {"n_components": 16, "k": 3, "weights": "uniform"}, 500, 10, 0
    )
    return SimpleNamespace(transform=fitted.transform, knn=fitted.knn, classes=list(DIGITS))


def test_replay_never_teaches_a_class_the_champion_lacks_unless_the_snapshot_labels_it():
    champion = champion_of(range(7))
    images, labels, _ = datagen.collect(
        datagen.image_stream(160, "rotation", 90.0, ROTATED, split="all", classes=(0, 1, 2, 3, 4, 5, 6, 8), seed=4)
    )
    labeled(images, labels)
    snapshot = create_snapshot(digits())
    settings = TrainingSettings(strategy=Strategy.REPLAY, replay_share=2.0)

    result = training.train(snapshot, champion=champion, settings=settings, progress=quiet)

    assert training.known_classes(champion, list(DIGITS)) == {str(n) for n in range(7)}
    assert result.params["train_counts"]["shipped"] > 0  # the champion's classes are replayed
    _, references = result.knn.reference
    assert {DIGITS[label] for label in np.unique(references)} == {"0", "1", "2", "3", "4", "5", "6", "8"}
    # Judged only on what it could know: the shipped test split of 7 and 9 stays out too.
    assert set(result.metrics["candidate"]["per_class"]) == {"0", "1", "2", "3", "4", "5", "6", "8"}
    # Without a champion (nothing known yet) every shipped class is replayed, as before.
    assert training.known_classes(None, list(DIGITS)) is None
    assert len(training.shipped_data(list(DIGITS)).test_labels) == 450


def test_the_snapshot_is_read_a_page_at_a_time_in_task_order(rotated_snapshot, monkeypatch, django_assert_num_queries):
    whole = training.build_dataset(rotated_snapshot)
    monkeypatch.setattr(training, "READ_CHUNK", 7)  # 360 items: 52 pages, the last one short

    with django_assert_num_queries(52):  # one whole query per page: no cursor stays open between pages
        rows = list(training._item_rows(rotated_snapshot))
    paged = training.build_dataset(rotated_snapshot)

    assert [row[0] for row in rows] == whole.task_ids.tolist()
    np.testing.assert_array_equal(paged.task_ids, whole.task_ids)
    np.testing.assert_array_equal(paged.labels, whole.labels)
    np.testing.assert_allclose(paged.features, whole.features)
