import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from edge_client import extractors
from edge_client.datagen import load_digits_sample
from edge_client.extractors import (
    ModelIntegrityError,
    ModelLoadError,
    RuntimeUnavailableError,
    TFLiteExtractor,
    image_statistics,
    image_statistics_vector,
    laplacian,
    shipped_model_paths,
)

MODEL_PATH, METADATA_PATH = shipped_model_paths()
ROOT = MODEL_PATH.parents[2]  # the directory holding the edge_client package


def metadata():
    return json.loads(METADATA_PATH.read_text())


@pytest.fixture(scope="module")
def extractor():
    import ai_edge_litert  # noqa: F401  (requirements/dev.txt)

    return TFLiteExtractor.shipped()


@pytest.fixture(scope="module")
def images():
    return load_digits_sample().images


# --- the TFLite extractor ---------------------------------------------------------------------


def test_it_returns_probabilities_and_features_for_one_image(extractor, images):
    probabilities, features = extractor.extract(images[0])
    assert probabilities.shape == (10,) and features.shape == (64,)
    assert probabilities.dtype == np.float32 and features.dtype == np.float32
    assert probabilities.argmax() == load_digits_sample().labels[0]


def test_the_batched_path_equals_one_image_at_a_time_across_chunks(images):
    import ai_edge_litert  # noqa: F401  (requirements/dev.txt)

    extractor = TFLiteExtractor.shipped(max_batch=16)
    batch_probabilities, batch_features = extractor.extract_batch(images[:40])
    assert batch_probabilities.shape == (40, 10) and batch_features.shape == (40, 64)
    for i in (0, 15, 16, 39):
        probabilities, features = extractor.extract(images[i])
        np.testing.assert_allclose(batch_probabilities[i], probabilities, atol=1e-6)
        np.testing.assert_allclose(batch_features[i], features, rtol=1e-5, atol=1e-5)


def test_it_accepts_integer_or_float_images_with_or_without_the_channel_axis(extractor, images):
    expected = extractor.extract(images[3])[0]
    for variant in (images[3].astype(np.float64), images[3][..., None], images[3].astype(np.int32)):
        np.testing.assert_allclose(extractor.extract(variant)[0], expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 8), (64,), (8, 8, 3), (2, 8, 8), ()])
def test_it_rejects_a_single_image_of_the_wrong_shape(extractor, shape):
    with pytest.raises(ValueError, match="expected one image"):
        extractor.extract(np.zeros(shape))


@pytest.mark.parametrize("shape", [(8, 8), (0, 8, 8), (3, 8, 7)])
def test_it_rejects_a_batch_of_the_wrong_shape(extractor, shape):
    with pytest.raises(ValueError, match="non-empty batch"):
        extractor.extract_batch(np.zeros(shape))


@pytest.mark.parametrize("bad", [np.full((8, 8), "a"), np.full((8, 8), None, dtype=object), np.ones((8, 8), bool)])
def test_it_rejects_non_numeric_pixels(extractor, bad):
    with pytest.raises(TypeError, match="int or float"):
        extractor.extract(bad)


def test_it_rejects_nan_pixels(extractor):
    with pytest.raises(ValueError, match="NaN"):
        extractor.extract(np.full((8, 8), np.nan))


def test_it_refuses_a_model_file_whose_sha256_does_not_match(tmp_path):
    tampered = tmp_path / "model.tflite"
    data = bytearray(MODEL_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        TFLiteExtractor(tampered, METADATA_PATH)


def test_it_refuses_metadata_that_pins_another_file(tmp_path):
    meta = {**metadata(), "sha256": "0" * 64}
    with pytest.raises(ModelIntegrityError, match="refusing"):
        TFLiteExtractor(MODEL_PATH, meta)


def test_it_explains_incomplete_metadata():
    meta = metadata()
    del meta["outputs"]["features"]
    with pytest.raises(ModelLoadError, match="features"):
        TFLiteExtractor(MODEL_PATH, meta)


def test_it_refuses_metadata_that_misdescribes_the_outputs(tmp_path):
    import ai_edge_litert  # noqa: F401  (requirements/dev.txt)

    meta = metadata()
    meta["outputs"]["features"]["shape"] = [32]
    with pytest.raises(ModelLoadError, match="output 'features' has shape"):
        TFLiteExtractor(MODEL_PATH, meta)


def test_it_loads_from_a_copy_with_its_metadata_as_a_path(tmp_path):
    import ai_edge_litert  # noqa: F401  (requirements/dev.txt)

    shutil.copy(MODEL_PATH, tmp_path / "m.tflite")
    shutil.copy(METADATA_PATH, tmp_path / "m.json")
    assert TFLiteExtractor(tmp_path / "m.tflite", tmp_path / "m.json").feature_dim == 64


# --- runtime selection and the numpy 2 / tflite-runtime failure -------------------------------


def _numpy2_failure():
    # What tflite-runtime 2.14 raises at interpreter creation under numpy 2 (observed).
    try:
        raise ImportError("numpy.core.multiarray failed to import")
    except ImportError as cause:
        message = "<built-in method CreateWrapperFromBuffer> returned a result with an exception set"
        raise SystemError(message) from cause


class Numpy2BrokenInterpreter:
    def __init__(self, **kwargs):
        _numpy2_failure()


class CorruptModelInterpreter:
    def __init__(self, **kwargs):
        raise ValueError("Model provided has model identifier 'abcd', should be 'TFL3'")


def test_it_explains_the_tflite_runtime_numpy2_failure(monkeypatch):
    monkeypatch.setattr(extractors, "_import_interpreter", lambda: (Numpy2BrokenInterpreter, "tflite-runtime"))
    with pytest.raises(RuntimeUnavailableError, match=r"numpy<2.*|ai-edge-litert") as info:
        TFLiteExtractor.shipped()
    assert "numpy<2" in str(info.value) and "ai-edge-litert" in str(info.value)
    assert isinstance(info.value.__cause__, SystemError)


def test_it_does_not_blame_numpy_for_other_load_failures(monkeypatch):
    monkeypatch.setattr(extractors, "_import_interpreter", lambda: (CorruptModelInterpreter, "tflite-runtime"))
    with pytest.raises(ModelLoadError, match="could not load the model: Model provided"):
        TFLiteExtractor.shipped()


def _hide_runtimes(monkeypatch, tflite_runtime=None):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", tflite_runtime)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", getattr(tflite_runtime, "interpreter", None))


def test_it_says_what_to_install_when_no_runtime_is_present(monkeypatch):
    _hide_runtimes(monkeypatch)
    with pytest.raises(RuntimeUnavailableError, match="pip install ai-edge-litert"):
        TFLiteExtractor.shipped()


def test_it_falls_back_to_tflite_runtime_without_ai_edge_litert(monkeypatch):
    package, module = types.ModuleType("tflite_runtime"), types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = CorruptModelInterpreter
    package.interpreter = module
    _hide_runtimes(monkeypatch, package)
    assert extractors._import_interpreter() == (CorruptModelInterpreter, "tflite-runtime")


def test_an_import_time_numpy2_failure_is_explained_too(monkeypatch):
    class Numpy2Finder:  # a numpy-1.x extension that fails while being imported
        def find_spec(self, name, path=None, target=None):
            if name == "tflite_runtime.interpreter":
                raise ImportError("numpy.core.multiarray failed to import")

    package = types.ModuleType("tflite_runtime")
    package.__path__ = []
    _hide_runtimes(monkeypatch, package)
    monkeypatch.delitem(sys.modules, "tflite_runtime.interpreter")
    monkeypatch.setattr(sys, "meta_path", [Numpy2Finder(), *sys.meta_path])
    with pytest.raises(RuntimeUnavailableError, match="numpy<2"):
        extractors._import_interpreter()


# --- image statistics -------------------------------------------------------------------------


def reference_laplacian(gray):
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=float)
    h, w = gray.shape
    return np.array([[np.sum(gray[i : i + 3, j : j + 3] * kernel) for j in range(w - 2)] for i in range(h - 2)])


def test_the_laplacian_equals_a_direct_3x3_convolution():
    gray = np.random.default_rng(0).random((9, 7))
    np.testing.assert_allclose(laplacian(gray), reference_laplacian(gray))


def test_image_statistics_of_a_grayscale_image(images):
    image = images[5].astype(float)
    stats = image_statistics(image)
    assert stats["brightness"] == pytest.approx(image.mean())
    assert stats["contrast"] == pytest.approx(image.std())
    assert stats["laplacian_variance"] == pytest.approx(reference_laplacian(image).var())
    assert stats["channel_means"] == [pytest.approx(image.mean())]
    assert image_statistics(image[..., None]) == stats


def test_image_statistics_report_one_mean_per_colour_channel():
    image = np.zeros((4, 5, 3))
    image[..., 0], image[..., 2] = 30.0, 90.0
    stats = image_statistics(image.astype(np.uint8))
    assert stats["channel_means"] == [30.0, 0.0, 90.0]
    assert stats["brightness"] == 40.0 and stats["laplacian_variance"] == 0.0
    np.testing.assert_allclose(image_statistics_vector(image), [40.0, 0.0, 0.0, 30.0, 0.0, 90.0])


def test_a_sharper_image_has_a_higher_laplacian_variance():
    checker = (np.indices((8, 8)).sum(axis=0) % 2) * 16.0
    smooth = np.tile(np.linspace(0, 16, 8), (8, 1))
    assert image_statistics(checker)["laplacian_variance"] > image_statistics(smooth)["laplacian_variance"]


@pytest.mark.parametrize("shape", [(2, 8), (8,), (8, 8, 1, 1), (8, 8, 0)])
def test_image_statistics_reject_shapes_that_are_not_images(shape):
    with pytest.raises(ValueError, match="image"):
        image_statistics(np.zeros(shape))


def test_image_statistics_reject_non_numeric_images():
    with pytest.raises(TypeError, match="int or float"):
        image_statistics(np.full((8, 8), "x"))


def test_the_device_modules_import_only_numpy_and_the_standard_library():
    code = (
        "import sys, edge_client.extractors, edge_client.transforms, edge_client.knn, edge_client.datagen\n"
        "heavy = {'sklearn', 'scipy', 'django', 'tensorflow', 'PIL', 'ai_edge_litert', 'tflite_runtime'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"  # the runtime is imported when an extractor is built, not before
