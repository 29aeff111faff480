"""``POST /api/v1/models/<family>/predict``: a version by alias, number or label answers exactly
what ``versions.load_model(...).predict`` answers; batches are checked before any model runs;
answers are cached when PREDICT_CACHE_SECONDS is set; devices and permitted users only."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
from PIL import Image

from edge_client.knn import KNN
from edge_client.transforms import PCA, FeatureTransform, StandardScaler
from registry import versions
from registry.bundles import build_bundle
from registry.models import CHALLENGER, CHAMPION
from registry.tests.factories import digits_family
from registry.tests.test_api import staff_with

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/digits/predict"
CLASSES = ["a", "b", "c", "d"]
DIM = 6


def register(seed: int):
    """A digits version over DIM features (scaler + PCA + KNN), with its bundle stored."""
    family = digits_family()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, DIM))
    transform = FeatureTransform([StandardScaler.fit(x), PCA.fit(StandardScaler.fit(x).transform(x), n_components=4)])
    knn = KNN(k=5, max_size=60).fit(transform.transform(x), np.arange(60) % len(CLASSES))
    number = versions.next_number(family)
    built = build_bundle(label=f"digits@{number}", classes=CLASSES, transform=transform, knn=knn, feature_dim=DIM)
    return versions.register_version(family, built, feature_dim=DIM, number=number)


@pytest.fixture
def two_versions():
    """digits@1 is the champion, digits@2 the challenger."""
    family = digits_family()
    first, second = register(1), register(2)
    versions.move_alias(family, CHAMPION, first)
    versions.move_alias(family, CHALLENGER, second)
    return first, second


@pytest.fixture
def caller(device_a):
    return device_a.auth


def rows(n: int, seed: int = 7) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, DIM)).round(6).tolist()


def post(client, body, auth=None, url=URL, content_type="application/json"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(url, data=data, content_type=content_type, **(auth or {}))


def expected(version, instances) -> list[dict]:
    labels, confidences, probabilities = versions.load_model(version).predict(instances)
    answer = []
    for label, confidence, row in zip(labels, confidences, probabilities, strict=True):
        top = np.argsort(-row, kind="stable")[:3]
        answer.append(
            {
                "label": label,
                "confidence": round(float(confidence), 6),
                "probabilities": {CLASSES[i]: round(float(row[i]), 6) for i in top},
            }
        )
    return answer


# --- answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, which",
    [(None, 0), ("champion", 0), ("challenger", 1), ("2", 1), (2, 1), ("digits@1", 0)],
)
def test_a_version_by_alias_number_or_label_answers_what_load_model_predicts(api, caller, two_versions, ref, which):
    version = two_versions[which]
    instances = rows(25)
    body = {"instances": instances} if ref is None else {"version": ref, "instances": instances}

    response = post(api, body, caller)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["version"] == version.label
    assert answer["predictions"] == expected(version, instances)
    assert all(len(p["probabilities"]) == 3 for p in answer["predictions"])


def test_the_two_versions_really_answer_differently(api, caller, two_versions):
    instances = rows(50)
    champion = post(api, {"instances": instances}, caller).json()["predictions"]
    challenger = post(api, {"version": "challenger", "instances": instances}, caller).json()["predictions"]
    assert champion != challenger


def test_a_batch_of_1000_rows_is_answered_in_order(api, caller, two_versions):
    instances = rows(1000)
    answer = post(api, {"version": "1", "instances": instances}, caller).json()
    assert len(answer["predictions"]) == 1000
    assert answer["predictions"][-3:] == expected(two_versions[0], instances[-3:])


# --- caching --------------------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch):
    """Counts the calls that load a model (every predict that is not a cache hit)."""
    calls = []
    real = versions.load_model

    def counting(version):
        calls.append(version.label)
        return real(version)

    monkeypatch.setattr(versions, "load_model", counting)
    return calls


def test_with_caching_a_repeated_batch_is_answered_from_the_cache_without_loading(
    api, caller, two_versions, loads, settings
):
    settings.PREDICT_CACHE_SECONDS = 60
    instances = rows(10)

    first = post(api, {"instances": instances}, caller)
    second = post(api, {"version": "digits@1", "instances": instances}, caller)
    other = post(api, {"instances": rows(10, seed=8)}, caller)
    challenger = post(api, {"version": "challenger", "instances": instances}, caller)

    assert [r["X-Predict-Cache"] for r in (first, second, other, challenger)] == ["miss", "hit", "miss", "miss"]
    assert first.json() == second.json()
    assert loads == ["digits@1", "digits@1", "digits@2"]


def test_without_caching_every_call_computes(api, caller, two_versions, loads, settings):
    settings.PREDICT_CACHE_SECONDS = 0
    instances = rows(3)
    answers = [post(api, {"instances": instances}, caller) for _ in range(2)]
    assert [r["X-Predict-Cache"] for r in answers] == ["off", "off"] and loads == ["digits@1", "digits@1"]


# --- who may call ---------------------------------------------------------------------------------


def test_devices_and_users_with_view_permission_may_predict_others_may_not(
    api, two_versions, device_b, outsider_api, operator_api, django_user_model
):
    body = {"instances": rows(2)}
    allowed = staff_with(django_user_model, "app", "view_modelversion")
    app = type(api)()
    app.force_login(allowed)

    assert post(api, body, device_b.auth).status_code == 200
    assert post(app, body).status_code == 200
    assert post(api, body).status_code == 401  # anonymous: the bearer scheme is asked for
    assert post(api, body, {"HTTP_AUTHORIZATION": "Bearer sphd_bad_token"}).status_code == 401
    assert post(outsider_api, body).status_code == 403
    assert post(operator_api, body).status_code == 403  # staff, but no registry.view_modelversion


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": [[0.0] * (DIM - 1)]}, "expects 6"),
        ({"instances": [[0.0] * DIM, [0.0] * (DIM + 2)]}, "instances[1] is 8 values; digits@1 expects 6"),
        ({"instances": [[0.0] * (DIM - 1) + ["1.5"]]}, "not a number"),
        ({"instances": [[0.0] * (DIM - 1) + [True]]}, "not a number"),
        ({"instances": [[0.0] * (DIM - 1) + [None]]}, "not a number"),
        ({"instances": [7]}, "instances[0] is a int"),
        ({"instances": []}, "1 to 1000"),
        ({"instances": [[0.0] * DIM] * 1001}, "1 to 1000"),
        ({"instances": "all"}, "1 to 1000"),
        ({"version": 1}, 'Give either "instances"'),
        ({"instances": [[0.0] * DIM], "images": ["x"]}, 'Give either "instances"'),
        ({"version": ["champion"], "instances": [[0.0] * DIM]}, "version:"),
        ([1, 2], "Body must be an object"),
    ],
)
def test_a_malformed_batch_is_a_400_that_says_what_is_wrong(api, caller, two_versions, body, message):
    response = post(api, body, caller)
    assert response.status_code == 400 and message in response.json()["detail"], response.content


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"instances": [[NaN, 0, 0, 0, 0, 0]]}', "not valid JSON"),
        (b'{"instances": [[1e999, 0, 0, 0, 0, 0]]}', "infinity"),
        (b'{"instances": [[0, 0', "not valid JSON"),
    ],
)
def test_nan_infinities_and_broken_json_are_refused(api, caller, two_versions, raw, message):
    response = post(api, raw, caller)
    assert response.status_code == 400 and message in response.json()["detail"], response.content


@pytest.mark.parametrize(
    "url, version, message",
    [
        ("/api/v1/models/letters/predict", "champion", "no model family 'letters'"),
        (URL, "digits@9", "digits has no version or alias '9'"),
        (URL, "staging", "digits has no version or alias 'staging'"),
        (URL, "other@1", "not a version of digits"),
    ],
)
def test_an_unknown_family_or_version_is_a_404_with_a_message(api, caller, two_versions, url, version, message):
    response = post(api, {"version": version, "instances": rows(1)}, caller, url=url)
    assert response.status_code == 404 and message in response.json()["detail"], response.content


def test_without_a_champion_the_default_is_a_404(api, caller):
    register(1)
    response = post(api, {"instances": rows(1)}, caller)
    assert response.status_code == 404 and "'champion'" in response.json()["detail"]


def test_a_body_over_the_api_limit_is_a_413_before_anything_is_read(api, caller, two_versions, settings, loads):
    settings.API_MAX_BODY_BYTES = 2048
    response = post(api, {"instances": rows(100)}, caller)
    assert response.status_code == 413 and "2048 bytes" in response.json()["detail"] and loads == []


def test_a_body_that_is_not_json_is_a_415(api, caller, two_versions):
    response = post(api, b"instances=1", caller, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_a_charset_in_the_content_type_is_fine(api, caller, two_versions):
    response = post(api, {"instances": rows(1)}, caller, content_type="application/json; charset=utf-8")
    assert response.status_code == 200, response.content


def test_other_methods_are_refused(api, caller, two_versions):
    assert api.get(URL, **caller).status_code == 405


# --- images ---------------------------------------------------------------------------------------


def png(pixels: np.ndarray) -> str:
    """An 8-bit grayscale PNG of raw 0..16 pixels, scaled as the server stores device images."""
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels * (255 / 16)).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_go_through_the_shipped_extractor_as_in_training(api, caller):
    from edge_client.datagen import load_digits_sample
    from edge_client.pipeline import bootstrap
    from registry import training

    transform, knn = bootstrap(training.shipped_extractor())
    family = digits_family()
    built = build_bundle(
        label="digits@1", classes=family.class_set.classes, transform=transform, knn=knn, feature_dim=64
    )
    version = versions.register_version(family, built, feature_dim=64, number=1)
    versions.move_alias(family, CHAMPION, version)
    sample = load_digits_sample()
    images, truth = np.asarray(sample.images[:12], dtype=np.float64), [str(n) for n in sample.labels[:12]]
    encoded = [png(image) for image in images]

    response = post(api, {"images": encoded}, caller)

    assert response.status_code == 200, response.content
    decoded = np.stack([training.decode_image(base64.b64decode(item), "x.png") for item in encoded])
    labels, _, _ = versions.load_model(version).predict(training.extract_features(decoded))
    answered = [p["label"] for p in response.json()["predictions"]]
    assert answered == list(labels)
    assert sum(a == b for a, b in zip(answered, truth, strict=True)) >= 10  # the digits are recognised
    bad = post(api, {"images": [encoded[0], "not base64!"]}, caller)
    assert bad.status_code == 400 and "images[1] is not a readable base64 image" in bad.json()["detail"]
    huge = post(api, {"images": [png(np.zeros((300, 300)))]}, caller)
    assert huge.status_code == 400 and "300×300 pixels" in huge.json()["detail"]
    number = post(api, {"images": [7]}, caller)
    assert number.status_code == 400 and "images[0] must be a non-empty base64 string" in number.json()["detail"]


def test_images_are_refused_for_a_version_that_does_not_take_extractor_features(api, caller, two_versions):
    response = post(api, {"images": [png(np.zeros((8, 8)))]}, caller)
    assert response.status_code == 400 and "send instances" in response.json()["detail"]
