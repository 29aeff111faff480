import json

import numpy as np
import pytest
from sklearn import decomposition, pipeline, preprocessing  # noqa: E402

from edge_client.transforms import PCA, FeatureTransform, StandardScaler


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) + rng.normal(scale=5, size=64)
    x[:, 7] = 3.0  # a constant feature: sklearn keeps scale 1 for it
    return x[:250], x[250:]


def server_scaler(train):
    fitted = preprocessing.StandardScaler().fit(train)
    return fitted, StandardScaler.from_params({"mean": fitted.mean_.tolist(), "scale": fitted.scale_.tolist()})


def server_pca(train, n_components=16, whiten=False):
    fitted = decomposition.PCA(n_components, whiten=whiten).fit(train)
    params = {
        "mean": fitted.mean_.tolist(),
        "components": fitted.components_.tolist(),
        "explained_variance": fitted.explained_variance_.tolist(),
        "whiten": whiten,
    }
    return fitted, PCA.from_params(params)


def test_the_scaler_equals_sklearn(data):
    train, test = data
    fitted, scaler = server_scaler(train)
    np.testing.assert_allclose(scaler.transform(test), fitted.transform(test), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scaler.transform(test[0]), fitted.transform(test[:1])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_equals_sklearn(data, whiten):
    train, test = data
    fitted, pca = server_pca(train, whiten=whiten)
    np.testing.assert_allclose(pca.transform(test), fitted.transform(test), rtol=1e-9, atol=1e-9)


def test_scaler_then_pca_equals_the_sklearn_pipeline(data):
    train, test = data
    sk = pipeline.make_pipeline(preprocessing.StandardScaler(), decomposition.PCA(8)).fit(train)
    scaler = StandardScaler(sk[0].mean_, sk[0].scale_)
    pca = PCA(sk[1].mean_, sk[1].components_, sk[1].explained_variance_)
    transform = FeatureTransform([scaler, pca])
    assert (transform.input_dim, transform.output_dim) == (64, 8)
    np.testing.assert_allclose(transform.transform(test), sk.transform(test), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(transform.transform(test[3]), sk.transform(test[3:4])[0], rtol=1e-9, atol=1e-9)


def test_params_survive_a_json_round_trip(data):
    train, test = data
    transform = FeatureTransform([server_scaler(train)[1], server_pca(train, whiten=True)[1]])
    again = FeatureTransform.from_params(json.loads(json.dumps(transform.to_params())))
    np.testing.assert_array_equal(again.transform(test), transform.transform(test))
    assert [step["type"] for step in again.to_params()["steps"]] == ["standard_scaler", "pca"]


def test_fitting_on_the_device_matches_sklearn(data):
    train, test = data
    np.testing.assert_allclose(
        StandardScaler.fit(train).transform(test), preprocessing.StandardScaler().fit(train).transform(test)
    )
    sk = decomposition.PCA(10, svd_solver="full").fit(train)
    np.testing.assert_allclose(PCA.fit(train, 10).transform(test), sk.transform(test), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mean": [0.0, 1.0], "scale": [1.0]}, "mean has 2 values but scale has 1"),
        ({"mean": [0.0], "scale": [0.0]}, "scale must be > 0"),
        ({"mean": [0.0]}, "need 'scale'"),
        ({"mean": [[0.0]], "scale": [1.0]}, "non-empty list of numbers"),
        ({"mean": [float("nan")], "scale": [1.0]}, "NaN"),
    ],
)
def test_the_scaler_rejects_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        StandardScaler.from_params(params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mean": [0.0, 0.0], "components": [[1.0, 0.0, 0.0]]}, "3 columns but mean has 2"),
        ({"mean": [0.0], "components": [[1.0], [1.0]]}, "2 components for 1 input"),
        ({"mean": [0.0, 0.0], "components": [[1.0, 0.0]], "whiten": True}, "needs explained_variance"),
        ({"mean": [0.0, 0.0], "components": [[1.0, 0.0]], "explained_variance": [1.0, 2.0]}, "2 values for 1"),
        ({"mean": [0.0, 0.0], "components": [1.0, 0.0]}, "equal-length rows"),
        ({"components": [[1.0]]}, "need 'mean'"),
    ],
)
def test_pca_rejects_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        PCA.from_params(params)


def test_transforms_reject_features_of_the_wrong_dimension():
    scaler = StandardScaler([0.0, 0.0], [1.0, 1.0])
    for transform in (scaler, FeatureTransform([scaler])):
        with pytest.raises(ValueError, match="dimension 2"):
            transform.transform(np.zeros(3))
        with pytest.raises(ValueError, match="dimension 2"):
            transform.transform(np.zeros((1, 1, 2)))


def test_a_chain_whose_dimensions_do_not_meet_is_refused():
    with pytest.raises(ValueError, match="step 0 outputs 1 values but step 1 expects 2"):
        FeatureTransform([PCA([0.0, 0.0], [[1.0, 0.0]]), StandardScaler([0.0, 0.0], [1.0, 1.0])])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "'steps' list"),
        ({"steps": [{"type": "umap", "params": {}}]}, "unknown type 'umap'"),
        ({"steps": [{"type": "pca"}]}, "'params' must be a dict"),
        ({"steps": []}, "at least one step"),
    ],
)
def test_a_malformed_chain_is_refused(params, message):
    with pytest.raises(ValueError, match=message):
        FeatureTransform.from_params(params)
