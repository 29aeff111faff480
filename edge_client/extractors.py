"""Feature extractors: the TFLite/LiteRT model (probabilities + feature vector) and image statistics.

The model file is pinned by the sha256 in its JSON metadata (written by tools/build_models.py); a
file that does not match is refused before the runtime ever parses it.

>>> import numpy as np
>>> stats = image_statistics(np.full((8, 8), 4.0))
>>> stats["brightness"], stats["contrast"], stats["laplacian_variance"], stats["channel_means"]
(4.0, 0.0, 0.0, [4.0])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED_MODEL = "digits_cnn"
OUTPUT_NAMES = ("probabilities", "features")

INSTALL_HINT = (
    "No TFLite runtime is installed. Install ai-edge-litert (`pip install ai-edge-litert`, or the "
    "edge client's `litert` extra); tflite-runtime 2.14 also works, but only with numpy<2."
)
NUMPY2_HINT = (
    "{backend} could not create its interpreter because it was built against numpy 1.x and this "
    "process runs numpy {numpy}. tflite-runtime 2.14 is known to fail this way. Install "
    "ai-edge-litert instead (`pip install ai-edge-litert`), or pin `numpy<2` for tflite-runtime."
)
# Text found in the errors numpy 2 raises when a numpy-1.x extension module initialises.
_NUMPY_ABI_MARKERS = ("_ARRAY_API", "numpy.core.multiarray failed to import", "compiled using NumPy 1.x")


class RuntimeUnavailableError(ImportError):
    """No usable TFLite runtime in this environment (missing, or broken under this numpy)."""


class ModelIntegrityError(ValueError):
    """The model file does not match the sha256 recorded in its metadata."""


class ModelLoadError(ValueError):
    """The metadata is incomplete, or the model does not match what the metadata describes."""


def load_metadata(metadata) -> dict:
    """Accept the metadata as a dict or as the path of its JSON file."""
    if isinstance(metadata, dict):
        return metadata
    with open(metadata, encoding="utf-8") as handle:
        return json.load(handle)


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_model_paths(name: str = SHIPPED_MODEL) -> tuple[Path, Path]:
    """(model, metadata) paths of a model packaged in edge_client/models/."""
    return MODELS_DIR / f"{name}.tflite", MODELS_DIR / f"{name}.json"


def _import_interpreter():
    """Return (Interpreter class, backend name): ai-edge-litert first, tflite-runtime as fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        if _is_numpy_abi_error(exc):
            raise RuntimeUnavailableError(NUMPY2_HINT.format(backend="tflite-runtime", numpy=np.__version__)) from exc
        raise RuntimeUnavailableError(INSTALL_HINT) from exc


def _is_numpy_abi_error(exc: BaseException) -> bool:
    """True when exc (or anything it was raised from) is numpy 2 refusing a numpy-1.x extension."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(marker in str(exc) for marker in _NUMPY_ABI_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _create_interpreter(interpreter_class, backend, content: bytes, num_threads):
    try:
        interpreter = interpreter_class(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except Exception as exc:
        # tflite-runtime 2.14 under numpy 2 fails here with an opaque SystemError: say what it means.
        if _is_numpy_abi_error(exc):
            raise RuntimeUnavailableError(NUMPY2_HINT.format(backend=backend, numpy=np.__version__)) from exc
        raise ModelLoadError(f"{backend} could not load the model: {exc}") from exc
    return interpreter


def _read_verified(model_path, expected_sha256: str) -> bytes:
    # Hash the same bytes the runtime will parse (model_content), so the file cannot change between
    # the check and the load.
    content = Path(model_path).read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{model_path}: sha256 {actual} does not match the metadata's {expected_sha256}; refusing to load it"
        )
    return content


def _validated_metadata(meta: dict) -> dict:
    try:
        spec = {
            "sha256": str(meta["sha256"]),
            "shape": tuple(int(n) for n in meta["input"]["shape"]),
            "scale": float(meta["input"]["scale"]),
            "outputs": {name: _output_spec(meta["outputs"][name]) for name in OUTPUT_NAMES},
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"model metadata is missing or has a bad value for {exc}") from exc
    return spec


def _output_spec(output: dict) -> dict:
    return {"position": int(output["position"]), "shape": [int(n) for n in output["shape"]]}


class TFLiteExtractor:
    """Runs the model: one image in, (class probabilities, penultimate feature vector) out.

    Images are raw pixel values in the metadata's `raw_range` (0..16 for the digits model), shaped
    like the model input with or without its trailing channel axis: (8, 8) or (8, 8, 1). The
    extractor applies the metadata's `scale` itself, so callers never feed pre-scaled images.

    `num_threads=1` by default: the model is tiny, so thread hand-offs cost more than they save,
    and on a 4-core device the other cores are busy with the pipeline and sync.
    """

    def __init__(self, model_path, metadata, num_threads: int = 1, max_batch: int = 64):
        self.model_path = Path(model_path)
        self.metadata = load_metadata(metadata)
        self.num_threads = num_threads
        self.max_batch = max_batch
        self._spec = _validated_metadata(self.metadata)
        content = _read_verified(self.model_path, self._spec["sha256"])
        interpreter_class, self.backend = _import_interpreter()
        self._interpreter = _create_interpreter(interpreter_class, self.backend, content, num_threads)
        self._bind()

    @classmethod
    def shipped(cls, name: str = SHIPPED_MODEL, **kwargs) -> TFLiteExtractor:
        """The model packaged with the edge client (edge_client/models/<name>.tflite + .json)."""
        model_path, metadata_path = shipped_model_paths(name)
        return cls(model_path, metadata_path, **kwargs)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._spec["shape"]

    @property
    def feature_dim(self) -> int:
        return self._spec["outputs"]["features"]["shape"][0]

    def extract(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, features) for one image."""
        batch = self._as_batch(image, batched=False)
        probabilities, features = self._run(batch)
        return probabilities[0], features[0]

    def extract_batch(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, classes), features (n, feature_dim)) for n images, in chunks of max_batch."""
        batch = self._as_batch(images, batched=True)
        chunks = [self._run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def _bind(self):
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1 or tuple(inputs[0]["shape"][1:]) != self.sample_shape:
            raise ModelLoadError(f"model input {[tuple(d['shape']) for d in inputs]} is not one {self.sample_shape}")
        if inputs[0]["dtype"] != np.float32:
            raise ModelLoadError(f"model input dtype is {inputs[0]['dtype']}, the extractor feeds float32")
        self._input_index = inputs[0]["index"]
        self._batch_size = int(inputs[0]["shape"][0])
        self._output_index = {name: self._bind_output(name) for name in OUTPUT_NAMES}

    def _bind_output(self, name: str) -> int:
        spec = self._spec["outputs"][name]
        outputs = self._interpreter.get_output_details()
        if spec["position"] >= len(outputs):
            raise ModelLoadError(
                f"metadata puts output {name!r} at position {spec['position']}; model has {len(outputs)}"
            )
        detail = outputs[spec["position"]]
        if list(detail["shape"][1:]) != spec["shape"]:
            raise ModelLoadError(
                f"output {name!r} has shape {list(detail['shape'][1:])}, metadata says {spec['shape']}"
            )
        return detail["index"]

    def _as_batch(self, images, batched: bool) -> np.ndarray:
        array = np.asarray(images)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"images must be int or float pixel values, got dtype {array.dtype}")
        shape, lead = self.sample_shape, 1 if batched else 0
        allowed = (shape, shape[:-1]) if shape[-1] == 1 else (shape,)
        if array.ndim < lead or tuple(array.shape[lead:]) not in allowed or (batched and len(array) == 0):
            what = "a non-empty batch (n, *shape)" if batched else "one image"
            raise ValueError(f"expected {what} with shape in {list(allowed)}, got array of shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError("images contain NaN or infinite pixel values")
        scaled = array.astype(np.float32) * np.float32(self._spec["scale"])
        return scaled.reshape((-1, *shape))

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) != self._batch_size:
            # Resizing re-plans the interpreter (slow), so it happens only when the batch size changes.
            self._interpreter.resize_tensor_input(self._input_index, [len(batch), *self.sample_shape])
            self._interpreter.allocate_tensors()
            self._batch_size = len(batch)
        self._interpreter.set_tensor(self._input_index, batch)
        self._interpreter.invoke()
        get = self._interpreter.get_tensor  # returns copies: safe to keep after the next invoke
        return get(self._output_index["probabilities"]), get(self._output_index["features"])


STATISTICS_NAMES = ("brightness", "contrast", "laplacian_variance")


def image_statistics(image) -> dict:
    """Brightness (mean), contrast (std), sharpness (variance of the Laplacian), per-channel means.

    `image` is (H, W) grayscale or (H, W, C); H and W of at least 3. Channels are averaged to
    grayscale for the first three statistics. A lower Laplacian variance means a blurrier image.
    """
    array = _as_image(image)
    gray = array.mean(axis=2)
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "laplacian_variance": float(laplacian(gray).var()),
        "channel_means": [float(m) for m in array.mean(axis=(0, 1))],
    }


def image_statistics_vector(image) -> np.ndarray:
    """The statistics as one float64 vector: brightness, contrast, laplacian_variance, channel means."""
    stats = image_statistics(image)
    return np.array([*(stats[name] for name in STATISTICS_NAMES), *stats["channel_means"]])


def laplacian(gray: np.ndarray) -> np.ndarray:
    """3x3 Laplacian ([0 1 0; 1 -4 1; 0 1 0]) over the interior pixels, as shifted slices.

    Only the valid region is returned: padding would invent edges at the border, which on an 8x8
    image is most of the pixels.
    """
    g = np.asarray(gray, dtype=np.float64)
    centre = g[1:-1, 1:-1]
    return g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * centre


def _as_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"image must hold int or float pixel values, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or min(array.shape[:2]) < 3 or array.shape[2] == 0:
        raise ValueError(f"expected an (H, W) or (H, W, C) image with H, W >= 3, got shape {np.shape(image)}")
    return array.astype(np.float64, copy=False)
