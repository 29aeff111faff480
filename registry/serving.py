"""Server-side prediction for thin clients (``POST /api/v1/models/<family>/predict``): the
body's rules, the inputs turned into features (images through the shipped extractor, as on a
device), the version's bundle loaded once per process (registry.versions.load_model), and the
optional answer cache (PREDICT_CACHE_SECONDS) keyed by the bundle's sha256 and the inputs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math

import numpy as np
import orjson
from django.conf import settings
from django.core.cache import cache

from registry import versions
from registry.models import ModelVersion

MAX_ROWS = 1000
TOP_CLASSES = 3
# Images are scaled down to the extractor's input (8×8 for digits). A small PNG can claim a huge
# canvas of zeros, so anything bigger than this is refused before its pixels are decoded.
MAX_IMAGE_PIXELS = 256 * 256


class PredictError(ValueError):
    """A request the endpoint cannot answer; the message names what is wrong."""


def parse_body(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PredictError(f"Body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PredictError('Body must be an object: {"version": ..., "instances": [...]}.')
    ref = body.setdefault("version", "champion")
    if isinstance(ref, bool) or not isinstance(ref, str | int) or not str(ref).strip():
        raise PredictError('version: an alias ("champion"), a number (4) or a label ("digits@4").')
    body["version"] = str(ref)
    return body


def read_inputs(body: dict, version: ModelVersion) -> tuple[str, np.ndarray]:
    """("instances", (n, feature_dim) floats) or ("images", (n, H, W) raw pixel values)."""
    given = [key for key in ("instances", "images") if key in body]
    if len(given) != 1:
        raise PredictError('Give either "instances" (feature vectors) or "images" (base64 PNG), not both.')
    rows = body[given[0]]
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS:
        raise PredictError(f"{given[0]}: a list of 1 to {MAX_ROWS} items.")
    if given[0] == "images":
        return "images", decode_images(rows, version)
    return "instances", instances_array(rows, version)


def instances_array(rows: list, version: ModelVersion) -> np.ndarray:
    dim = version.feature_dim
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != dim:
            size = f"{len(row)} values" if isinstance(row, list) else f"a {type(row).__name__}"
            raise PredictError(f"instances[{i}] is {size}; {version.label} expects {dim} (its feature_dim).")
        # JSON numbers only: numpy would turn "1.5" and true into floats without a word.
        if not all(type(value) is float or type(value) is int for value in row):
            raise PredictError(f"instances[{i}] holds a value that is not a number.")
    array = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise PredictError(f"instances[{row}] holds a value that is not a finite number.")
    return array


def decode_images(items: list, version: ModelVersion) -> np.ndarray:
    """Base64 images back to the extractor's input, as training reads stored images."""
    from registry import training

    dim = training.shipped_extractor().feature_dim
    if version.feature_dim != dim:
        raise PredictError(
            f"{version.label} takes {version.feature_dim} features, not the extractor's {dim}: send instances."
        )
    return np.stack([decode_image(item, i) for i, item in enumerate(items)])


def decode_image(item, i: int) -> np.ndarray:
    from PIL import Image

    from registry import training

    if not isinstance(item, str) or not item:
        raise PredictError(f"images[{i}] must be a non-empty base64 string.")
    try:
        data = base64.b64decode(item, validate=True)
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (binascii.Error, OSError, Image.DecompressionBombError) as exc:  # PIL's errors are OSErrors
        raise PredictError(f"images[{i}] is not a readable base64 image: {exc}") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise PredictError(f"images[{i}] is {width}×{height} pixels; at most {MAX_IMAGE_PIXELS} are accepted.")
    try:
        return training.decode_image(data, "image.png")
    except (ValueError, OSError) as exc:
        raise PredictError(f"images[{i}] cannot be read: {exc}") from None


def predict_cached(version: ModelVersion, kind: str, inputs: np.ndarray) -> tuple[list[dict], str]:
    """The predictions and "hit", "miss" or "off" (caching disabled)."""
    seconds = settings.PREDICT_CACHE_SECONDS
    if seconds <= 0:
        return predict(version, kind, inputs), "off"
    key = cache_key(version, kind, inputs)
    found = cache.get(key)
    if found is not None:
        return found, "hit"
    predictions = predict(version, kind, inputs)
    cache.set(key, predictions, timeout=seconds)
    return predictions, "miss"


def cache_key(version: ModelVersion, kind: str, inputs: np.ndarray) -> str:
    # The bundle's sha256, not the version id: the same bytes answer the same, whatever their name.
    digest = hashlib.sha256(f"{kind}:{inputs.shape}:".encode())
    digest.update(np.ascontiguousarray(inputs, dtype=np.float64).tobytes())
    return f"registry:predict:{version.bundle_sha256}:{digest.hexdigest()}"


def predict(version: ModelVersion, kind: str, inputs: np.ndarray) -> list[dict]:
    features = inputs
    if kind == "images":
        from registry import training

        features = training.extract_features(inputs)
    loaded = versions.load_model(version)
    labels, confidences, probabilities = loaded.predict(features)
    return [
        {"label": label, "confidence": _number(confidence), "probabilities": top_classes(row, loaded.classes)}
        for label, confidence, row in zip(labels, confidences.tolist(), probabilities, strict=True)
    ]


def top_classes(row: np.ndarray, classes: list[str]) -> dict[str, float]:
    order = np.argsort(-row, kind="stable")[:TOP_CLASSES]
    return {(classes[i] if i < len(classes) else str(i)): _number(row[i]) for i in order.tolist()}


def _number(value) -> float:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else 0.0
