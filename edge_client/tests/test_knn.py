import numpy as np
import pytest
import sklearn  # noqa: E402,F401  (requirements/dev.txt)
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from edge_client.knn import KNN, balanced_subset


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=0.6, size=(10, 256))
    y = np.arange(200) % 10
    x = centres[y] + rng.normal(size=(200, 256))
    queries = centres[rng.integers(10, size=100)] + rng.normal(size=(100, 256))
    return x, y, queries


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [1, 5, 11])
def test_it_equals_sklearn_kneighbors_classifier(data, weighted, k):
    x, y, queries = data
    sk = KNeighborsClassifier(k, weights="distance" if weighted else "uniform", algorithm="brute").fit(x, y)
    ours = KNN(k=k, max_size=200, weighted=weighted).fit(x, y).predict_batch(queries)
    sk_distances, sk_indices = sk.kneighbors(queries)
    np.testing.assert_array_equal(ours.indices, sk_indices)
    np.testing.assert_allclose(ours.distances, sk_distances, rtol=1e-9)
    np.testing.assert_allclose(ours.probabilities, sk.predict_proba(queries), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours.labels, sk.predict(queries))


def test_one_sample_gives_the_same_answer_as_the_batch(data):
    x, y, queries = data
    knn = KNN(k=5, max_size=200, weighted=True).fit(x, y)
    batch = knn.predict_batch(queries[:20])
    for i, query in enumerate(queries[:20]):
        one = knn.predict(query)
        assert one.label == batch.labels[i] and one.confidence == pytest.approx(batch.confidences[i])
        np.testing.assert_array_equal(one.indices, batch.indices[i])
        np.testing.assert_allclose(one.distances, batch.distances[i])
        np.testing.assert_allclose(one.probabilities, batch.probabilities[i])


def test_a_query_on_a_reference_takes_its_label_when_weighted(data):
    x, y, _ = data
    sk = KNeighborsClassifier(7, weights="distance").fit(x, y)
    prediction = KNN(k=7, max_size=200, weighted=True).fit(x, y).predict(x[13])
    assert prediction.label == y[13] == sk.predict(x[13:14])[0]
    assert prediction.confidence == 1.0 and prediction.distances[0] == pytest.approx(0.0, abs=1e-6)


def test_with_fewer_references_than_k_it_uses_them_all():
    knn = KNN(k=5).fit([[0.0], [1.0], [5.0]], [0, 1, 1])
    prediction = knn.predict(np.array([0.1]))
    assert len(prediction.distances) == 3 and prediction.label == 1
    np.testing.assert_allclose(prediction.probabilities, [1 / 3, 2 / 3])


def test_probabilities_cover_n_classes_even_if_some_are_absent():
    prediction = KNN(k=1, n_classes=4).fit([[0.0], [2.0]], [1, 3]).predict(np.array([1.9]))
    assert prediction.probabilities.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_the_reference_set_never_grows_past_max_size():
    knn = KNN(k=3, max_size=10)
    rng = np.random.default_rng(0)
    for i in range(100):
        knn.add(rng.normal(size=4), i % 3)
    assert knn.size == 10 and knn.reference[0].shape == (10, 4)


def test_balanced_fifo_replaces_the_oldest_sample_of_the_largest_class():
    knn = KNN(k=1, max_size=4).fit([[0.0], [1.0], [2.0], [10.0]], [0, 0, 0, 1])
    slot = knn.add([3.0], 1)  # class 0 is the largest: its oldest sample (0.0) goes
    assert slot == 0
    x, y = knn.reference
    assert sorted(x.ravel().tolist()) == [1.0, 2.0, 3.0, 10.0] and sorted(y.tolist()) == [0, 0, 1, 1]
    knn.add([4.0], 1)  # now 0 and 1 tie: the incoming sample's class gives up its oldest (10.0)
    assert sorted(knn.reference[0].ravel().tolist()) == [1.0, 2.0, 3.0, 4.0]


def test_a_new_class_gets_into_a_full_reference_set():
    knn = KNN(k=1, max_size=3).fit([[0.0], [1.0], [2.0]], [0, 0, 0])
    knn.add([9.0], 5)
    prediction = knn.predict(np.array([9.1]))
    assert prediction.label == 5 and len(prediction.probabilities) == 6


def test_the_reservoir_keeps_a_uniform_sample_and_is_reproducible():
    def run(seed):
        knn = KNN(k=1, max_size=100, policy="reservoir", seed=seed)
        for i in range(2000):
            knn.add([float(i)], 0)
        return knn.reference[0].ravel()

    kept = run(3)
    assert len(kept) == 100 and np.array_equal(kept, run(3)) and not np.array_equal(kept, run(4))
    assert 25 <= np.sum(kept >= 1000) <= 75  # about half from each half of the stream


def test_state_round_trips_through_npz_without_pickle(tmp_path, data):
    x, y, queries = data
    knn = KNN(k=5, max_size=150, weighted=True, policy="reservoir", seed=9).fit(x[:120], y[:120])
    for i in range(120, 200):
        knn.add(x[i], y[i])
    np.savez(tmp_path / "knn.npz", **knn.to_state())
    with np.load(tmp_path / "knn.npz", allow_pickle=False) as state:
        again = KNN.from_state(state)
    assert (again.k, again.max_size, again.weighted, again.policy, again.seed) == (5, 150, True, "reservoir", 9)
    np.testing.assert_array_equal(again.predict_batch(queries).probabilities, knn.predict_batch(queries).probabilities)
    for i in range(50):  # and it goes on exactly as the original would
        assert again.add(queries[i], i % 10) == knn.add(queries[i], i % 10)
    np.testing.assert_array_equal(again.reference[0], knn.reference[0])


def test_an_empty_knn_round_trips_and_refuses_to_predict():
    again = KNN.from_state(KNN(k=2).to_state())
    with pytest.raises(RuntimeError, match="no references"):
        again.predict(np.zeros(3))


def test_it_rejects_bad_inputs_with_clear_errors():
    knn = KNN(k=1, max_size=2).fit([[0.0, 1.0]], [0])
    with pytest.raises(ValueError, match=r"queries must be \(n, 2\)"):
        knn.predict(np.zeros(3))
    with pytest.raises(ValueError, match="one sample"):
        knn.predict(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"references must be \(n, 2\)"):
        knn.add([0.0, 1.0, 2.0], 0)
    with pytest.raises(ValueError, match="non-negative integers"):
        knn.add([0.0, 1.0], -1)
    with pytest.raises(ValueError, match="non-negative integers"):
        knn.fit([[0.0, 1.0]], [0.5])
    with pytest.raises(ValueError, match="exceed max_size=2"):
        knn.fit(np.zeros((3, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="policy"):
        KNN(policy="lru")


def test_balanced_subset_spreads_picks_over_the_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 5)
    picked = balanced_subset(labels, 30, seed=0)
    assert len(picked) == 30 and len(set(picked)) == 30
    assert np.bincount(labels[picked]).tolist() == [13, 12, 5]  # class 2 has only 5
    assert np.bincount(labels[balanced_subset(labels, 40)]).tolist() == [18, 17, 5]
