import hashlib

import numpy as np
import pytest

from edge_client.datagen import (
    SAMPLE_PATH,
    SHIFTS,
    STATIONARY,
    DriftSchedule,
    apply_shift,
    collect,
    gaussian_blur,
    image_stream,
    load_digits_sample,
    novel_class_stream,
    ramp,
    rotate,
    stationary_stream,
    synthetic_glyphs,
    vector_stream,
)
from edge_client.extractors import image_statistics


def digest(stream) -> str:
    x, y, metas = collect(stream)
    return hashlib.sha256(x.tobytes() + y.tobytes() + repr(metas).encode()).hexdigest()


# --- schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "sigmoid"])
def test_a_transition_starts_at_the_onset_and_completes_at_its_end(shape):
    schedule = DriftSchedule("gradual", onset=100, width=50, shape=shape)
    weights = [schedule.weight(t) for t in range(300)]
    assert weights[99] == 0.0 and 0.0 < weights[100] < 0.05
    assert schedule.end == 149 and weights[149] == 1.0 > weights[148]
    assert all(a <= b for a, b in zip(weights, weights[1:]))
    assert weights[124] == pytest.approx(0.5, abs=0.03)


def test_a_sigmoid_transition_is_slower_at_the_edges_than_a_linear_one():
    assert ramp(0.1, "sigmoid") < ramp(0.1, "linear") and ramp(0.9, "sigmoid") > ramp(0.9, "linear")
    assert (ramp(0.0, "sigmoid"), ramp(0.5, "sigmoid"), ramp(1.0, "sigmoid")) == pytest.approx((0.0, 0.5, 1.0))


def test_phases_tell_the_ground_truth():
    abrupt = DriftSchedule("abrupt", onset=3)
    assert [abrupt.step(t, 0.5)["phase"] for t in (2, 3)] == ["before", "drifted"]
    assert STATIONARY.step(10, 0.0) == {
        **STATIONARY.step(10, 0.0),
        "phase": "stationary",
        "weight": 0.0,
        "mix": 0.0,
    }


def test_recurring_drift_comes_back_every_period():
    schedule = DriftSchedule("recurring", onset=10, width=2, duration=5, period=20)
    weights = np.array([schedule.weight(t) for t in range(80)])
    np.testing.assert_array_equal(weights[10:30], weights[30:50])
    assert np.sum(weights[10:30] == 1.0) == 5 and weights[:10].max() == 0.0
    phases = {schedule.step(t, 0.5)["phase"] for t in range(80)}
    assert phases == {"before", "transition", "drifted", "recovered"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drift": "sudden"},
        {"drift": "abrupt", "shape": "cubic"},
        {"drift": "gradual", "onset": 5},
        {"drift": "recurring", "duration": 10, "period": 5},
        {"drift": "abrupt", "onset": -1},
    ],
)
def test_inconsistent_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        DriftSchedule(**kwargs)


# --- scalar / vector streams ------------------------------------------------------------------


def test_streams_are_reproducible_by_seed():
    schedule = DriftSchedule("gradual", onset=200, width=100, shape="sigmoid")
    assert digest(vector_stream(500, schedule, dim=4, seed=7)) == digest(vector_stream(500, schedule, dim=4, seed=7))
    assert digest(vector_stream(500, schedule, dim=4, seed=7)) != digest(vector_stream(500, schedule, dim=4, seed=8))


def test_a_drifting_stream_equals_its_control_before_the_onset_and_not_after():
    x, y, metas = collect(vector_stream(1000, DriftSchedule("abrupt", onset=600), dim=3, shift=2.0, seed=1))
    xc, yc, _ = collect(stationary_stream(1000, dim=3, seed=1))
    np.testing.assert_array_equal(x[:600], xc[:600])
    np.testing.assert_array_equal(y, yc)  # feature drift leaves labels alone
    offset = x[600:] - xc[600:]
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape))
    assert np.linalg.norm(offset[0]) == pytest.approx(2.0)
    assert metas[599]["phase"] == "before" and metas[600]["phase"] == "drifted"


def test_scalar_streams_yield_floats():
    x, _, metas = next(iter(stationary_stream(1)))
    assert isinstance(x, float) and metas["phase"] == "stationary"


def test_gradual_drift_interleaves_concepts_with_a_rising_share():
    _, _, metas = collect(vector_stream(3000, DriftSchedule("gradual", onset=1000, width=1000), seed=2))
    mix = np.array([m["mix"] for m in metas])
    assert set(mix) == {0.0, 1.0} and mix[:1000].sum() == 0 and mix[2000:].min() == 1.0
    assert mix[1000:1250].mean() < 0.3 < 0.7 < mix[1750:2000].mean()


def test_incremental_drift_moves_the_concept_continuously():
    schedule = DriftSchedule("incremental", onset=100, width=100)
    x, _, metas = collect(vector_stream(300, schedule, n_classes=1, noise=0.0, shift=5.0, seed=3))
    steps = np.abs(np.diff(x))
    assert steps[:99].max() == 0.0 and steps[100:198].max() == pytest.approx(0.05) and steps[199:].max() == 0.0
    assert [m["mix"] for m in metas[99:102]] == [0.0, 0.01, 0.02]


def test_concept_drift_changes_labels_but_not_inputs():
    schedule = DriftSchedule("abrupt", onset=500)
    x, y, metas = collect(vector_stream(1000, schedule, kind="concept", n_classes=3, seed=4))
    xc, yc, _ = collect(stationary_stream(1000, kind="concept", n_classes=3, seed=4))
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(y[:500], yc[:500])
    np.testing.assert_array_equal(y[500:], (yc[500:] + 1) % 3)
    assert metas[0]["kind"] == "concept"


# --- digits images and image shifts -----------------------------------------------------------


def test_the_shipped_digits_load_without_pickle():
    digits = load_digits_sample(SAMPLE_PATH)
    assert digits.images.shape == (1797, 8, 8) and digits.images.dtype == np.uint8
    assert digits.images.max() == 16 and set(digits.labels) == set(range(10))
    assert len(np.unique(digits.test_index)) == len(digits.test_index) == 450


@pytest.fixture(scope="module")
def image():
    digits = load_digits_sample()
    return digits.images[digits.test_index[0]].astype(float)


def stat(image, name):
    return image_statistics(image)[name]


def test_brightening_raises_brightness_and_darkening_lowers_it(image):
    assert stat(apply_shift(image, "brightness", 4.0), "brightness") > stat(image, "brightness")
    assert stat(apply_shift(image, "brightness", -4.0), "brightness") < stat(image, "brightness")


def test_blurring_lowers_the_laplacian_variance(image):
    assert stat(gaussian_blur(image, 1.0), "laplacian_variance") < 0.5 * stat(image, "laplacian_variance")
    np.testing.assert_array_equal(gaussian_blur(image, 0.0), image)


def test_lowering_contrast_lowers_the_standard_deviation(image):
    assert stat(apply_shift(image, "contrast", 0.5), "contrast") == pytest.approx(0.5 * stat(image, "contrast"))


def test_noise_raises_the_laplacian_variance(image):
    noisy = apply_shift(image, "noise", 3.0, np.random.default_rng(0))
    assert stat(noisy, "laplacian_variance") > stat(image, "laplacian_variance")


def test_rotation_maps_indices_exactly_for_quarter_turns(image):
    np.testing.assert_allclose(rotate(image, 90), np.rot90(image), atol=1e-12)
    np.testing.assert_allclose(rotate(image, 180), image[::-1, ::-1], atol=1e-12)
    np.testing.assert_allclose(rotate(image, 0), image)
    turned = rotate(image, 30)
    assert not np.allclose(turned, image) and 0.0 <= turned.min() and turned.max() <= 16.0


def test_every_shift_at_its_identity_amount_leaves_the_image_alone(image):
    for name, (_, identity) in SHIFTS.items():
        np.testing.assert_allclose(apply_shift(image, name, identity), image, err_msg=name)
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(image, "fog", 1.0)


def test_an_abrupt_brightness_shift_brightens_the_stream_from_its_onset():
    schedule = DriftSchedule("abrupt", onset=100)
    x, _, metas = collect(image_stream(200, "brightness", 5.0, schedule, seed=5))
    xc, _, _ = collect(image_stream(200, seed=5))
    np.testing.assert_array_equal(x[:100], xc[:100])
    assert x[100:].mean() > xc[100:].mean() + 2.0
    assert metas[99]["amount"] == 0.0 and metas[100]["amount"] == 5.0 and metas[100]["shift"] == "brightness"


def test_an_incremental_blur_sharpens_less_and_less():
    schedule = DriftSchedule("incremental", onset=50, width=100)
    x, _, metas = collect(image_stream(300, "blur", 1.5, schedule, seed=6))
    amounts = [m["amount"] for m in metas]
    assert amounts[49] == 0.0 and all(a <= b for a, b in zip(amounts, amounts[1:])) and amounts[149] == 1.5
    sharpness = np.array([stat(img, "laplacian_variance") for img in x])
    assert sharpness[150:].mean() < 0.5 * sharpness[:50].mean()


def test_image_streams_are_reproducible_and_draw_from_the_held_out_split():
    schedule = DriftSchedule("gradual", onset=20, width=40)
    assert digest(image_stream(100, "noise", 2.0, schedule, seed=1)) == digest(
        image_stream(100, "noise", 2.0, schedule, seed=1)
    )
    test_index = set(load_digits_sample().test_index.tolist())
    assert all(meta["index"] in test_index for _, _, meta in image_stream(100, seed=1))


def test_class_filters_restrict_the_labels():
    _, y, _ = collect(image_stream(100, classes=[3, 5], split="train", seed=2))
    assert set(y) == {3, 5}
    with pytest.raises(ValueError, match="split"):
        next(image_stream(1, split="validation"))


# --- novel classes ----------------------------------------------------------------------------


def test_held_out_digits_appear_only_from_the_onset():
    schedule = DriftSchedule("abrupt", onset=150)
    _, y, metas = collect(novel_class_stream(300, schedule, known=range(7), novel=(7, 8, 9), seed=3))
    assert set(y[:150]) <= set(range(7)) and set(y[150:]) <= {7, 8, 9}
    assert not any(m["novel"] for m in metas[:150]) and all(m["novel"] for m in metas[150:])


def test_synthetic_glyphs_are_classes_the_model_never_saw():
    images, labels = synthetic_glyphs(50, seed=0)
    assert images.shape == (50, 8, 8) and set(labels) <= {10, 11, 12, 13}
    assert 0.0 <= images.min() and images.max() <= 16.0
    schedule = DriftSchedule("gradual", onset=50, width=50)
    _, y, metas = collect(novel_class_stream(200, schedule, source="synthetic", seed=4))
    assert y[:50].max() < 7 and y[100:].min() >= 10
    assert digest(novel_class_stream(200, schedule, source="synthetic", seed=4)) == digest(
        novel_class_stream(200, schedule, source="synthetic", seed=4)
    )
