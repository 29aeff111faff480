"""The model committed in edge_client/models/ is the one its metadata describes, and it is good."""

import hashlib
import json

import ai_edge_litert  # noqa: E402,F401  (requirements/dev.txt: a missing runtime must fail, not skip)
import numpy as np
import pytest

from edge_client.datagen import SAMPLE_PATH, load_digits_sample
from edge_client.extractors import TFLiteExtractor, shipped_model_paths

MODEL_PATH, METADATA_PATH = shipped_model_paths()


@pytest.fixture(scope="module")
def metadata():
    return json.loads(METADATA_PATH.read_text())


@pytest.fixture(scope="module")
def extractor():
    return TFLiteExtractor.shipped()


def test_the_model_file_matches_the_sha256_and_size_in_its_metadata(metadata):
    data = MODEL_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == metadata["sha256"]
    assert len(data) == metadata["size_bytes"] < 1_000_000


def test_the_digits_sample_is_the_one_the_model_was_scored_on(metadata):
    assert hashlib.sha256(SAMPLE_PATH.read_bytes()).hexdigest() == metadata["dataset"]["sha256"]
    digits = load_digits_sample()
    assert len(digits.test_index) == metadata["dataset"]["test_samples"]
    assert len(digits.labels) - len(digits.test_index) == metadata["dataset"]["train_samples"]


def test_its_accuracy_through_the_interpreter_matches_the_metadata(metadata, extractor):
    digits = load_digits_sample()
    images, labels = digits.images[digits.test_index], digits.labels[digits.test_index]
    accuracy = np.mean([extractor.extract(image)[0].argmax() == label for image, label in zip(images, labels)])
    assert accuracy == pytest.approx(metadata["test_accuracy"], abs=0.01)
    assert accuracy > 0.95


def test_it_gives_a_probability_vector_and_a_feature_vector_of_the_stated_sizes(metadata, extractor):
    probabilities, features = extractor.extract(load_digits_sample().images[0])
    assert probabilities.shape == (metadata["num_classes"],) == (len(metadata["class_names"]),)
    assert features.shape == (metadata["feature_dim"],) == (extractor.feature_dim,)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.all(features >= 0)  # the feature layer is a ReLU
