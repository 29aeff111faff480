"""Build the small TFLite model the edge client ships (dev-only: needs TensorFlow, never on a device).

Trains a small CNN on the 8x8 digits bundled inside scikit-learn (no download), exports a float32
TFLite model with two named outputs (class probabilities and the penultimate feature vector), and
writes into edge_client/models/:

- digits_cnn.tflite   the model
- digits_cnn.json     its metadata: sha256, input contract, outputs, accuracy measured through LiteRT
- digits_sample.npz   the digits images + labels + the held-out split, so devices and tests (no
                      scikit-learn there) run the same images the model was scored on

Usage (TensorFlow stays out of the project's venv):

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install -r requirements/models.txt
    /tmp/tfvenv/bin/python tools/build_models.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

# Set before TensorFlow is imported: it reads these once, at import time.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
# oneDNN reorders float sums depending on the machine; off keeps reruns byte-identical here.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "edge_client" / "models"
MODEL_NAME = "digits_cnn"
SAMPLE_FILE = "digits_sample.npz"
PIXEL_MAX = 16.0  # load_digits pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap)
FEATURE_DIM = 64
NUM_CLASSES = 10
TEST_SIZE = 0.25


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    return parser.parse_args(argv)


def load_dataset():
    """Digits as uint8 images (n, 8, 8) and labels; the values are small integers, so uint8 is exact."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.uint8)


def split_indices(labels, seed):
    """Fixed stratified split, so the accuracy in the metadata is reproducible on the device's copy."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=TEST_SIZE, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def to_model_input(images):
    return (images.astype(np.float32) / PIXEL_MAX)[..., np.newaxis]


def configure_determinism(tf, seed):
    tf.keras.utils.set_random_seed(seed)  # python, numpy and TF seeds in one call
    tf.config.experimental.enable_op_determinism()
    # One thread: parallel reductions are the remaining source of run-to-run float differences.
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)


def build_model(tf):
    """~38k parameters: two 3x3 convolutions, a 64-d feature layer, a softmax head."""
    layers = tf.keras.layers
    image = layers.Input(shape=(8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    features = layers.Dense(FEATURE_DIM, activation="relu", name="features")(x)
    x = layers.Dropout(0.3)(features)  # identity at inference; regularises the feature layer
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    # Two views of the same layers: train the classifier, export both outputs.
    classifier = tf.keras.Model(image, probabilities)
    return classifier, tf.keras.Model(image, {"probabilities": probabilities, "features": features})


def train(tf, classifier, x, y, args):
    optimizer = tf.keras.optimizers.Adam(args.learning_rate)
    classifier.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Fixed epochs, no early stopping on a validation split: the test split stays untouched.
    classifier.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, shuffle=True, verbose=0)


def export_tflite(tf, model):
    """Float32 TFLite with one signature whose outputs keep the names `probabilities` and `features`."""
    # Keras' own export archive: a bare tf.Module does not track Keras 3 variables, and the
    # converter then silently emits a model without its weights.
    archive = tf.keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")
    archive.add_endpoint("serving_default", lambda image: model(image, training=False), input_signature=[spec])
    with tempfile.TemporaryDirectory() as saved:
        archive.write_out(saved, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(saved).convert()


def output_positions(interpreter):
    """Map output name -> position in get_output_details(), resolved through the signature."""
    runner = interpreter.get_signature_runner("serving_default")
    by_index = {d["index"]: pos for pos, d in enumerate(interpreter.get_output_details())}
    return {name: by_index[d["index"]] for name, d in runner.get_output_details().items()}


def litert_predict(model_bytes, x):
    """Run the exported bytes through LiteRT (the device runtime), one sample per invoke like a device.

    Returns the probabilities and the outputs' description for the metadata.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    outputs = describe_outputs(interpreter, output_positions(interpreter))
    probabilities_index = interpreter.get_output_details()[outputs["probabilities"]["position"]]["index"]
    input_index = interpreter.get_input_details()[0]["index"]
    probabilities = []
    for sample in x:
        interpreter.set_tensor(input_index, sample[np.newaxis])
        interpreter.invoke()
        probabilities.append(interpreter.get_tensor(probabilities_index)[0])
    return np.array(probabilities), outputs


def sample_archive(images, labels, test_index):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels, test_index=test_index.astype(np.int16))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_outputs(interpreter, positions):
    details = interpreter.get_output_details()
    return {
        name: {"position": pos, "shape": [int(n) for n in details[pos]["shape"][1:]], "dtype": "float32"}
        for name, pos in sorted(positions.items())
    }


def versions(tf):
    import ai_edge_litert
    import sklearn

    litert = getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")
    return {
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "ai-edge-litert": litert,
        "python": platform.python_version(),
    }


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


def model_spec(model_bytes, outputs, accuracy):
    return {
        "format_version": 1,
        "name": MODEL_NAME,
        "file": f"{MODEL_NAME}.tflite",
        "sha256": sha256(model_bytes),
        "size_bytes": len(model_bytes),
        "input": {
            "name": "image",
            "shape": [8, 8, 1],
            "dtype": "float32",
            "raw_range": [0.0, PIXEL_MAX],
            "scale": 1.0 / PIXEL_MAX,
            "note": "raw pixel values 0..16 (sklearn load_digits) are multiplied by scale to give 0..1",
        },
        "outputs": outputs,
        "feature_dim": outputs["features"]["shape"][0],
        "num_classes": NUM_CLASSES,
        "class_names": [str(c) for c in range(NUM_CLASSES)],
        "test_accuracy": round(float(accuracy), 6),
        "accuracy_measured_with": "ai-edge-litert interpreter on the held-out split, one sample per invoke",
    }


def dataset_spec(sample_bytes, train_index, test_index, seed):
    return {
        "source": "sklearn.datasets.load_digits",
        "file": SAMPLE_FILE,
        "sha256": sha256(sample_bytes),
        "split": f"stratified train_test_split(test_size={TEST_SIZE}, random_state={seed})",
        "train_samples": len(train_index),
        "test_samples": len(test_index),
    }


def training_spec(args, parameters):
    return {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": "adam",
        "learning_rate": args.learning_rate,
        "loss": "sparse_categorical_crossentropy",
        "architecture": "conv3x3(16)-relu, conv3x3(32)-relu, maxpool2, dense(64)-relu [features], "
        "dropout(0.3), dense(10)-softmax [probabilities]",
        "parameters": int(parameters),
    }


def write_artifacts(out_dir, model_bytes, sample_bytes, meta):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{MODEL_NAME}.tflite").write_bytes(model_bytes)
    (out_dir / SAMPLE_FILE).write_bytes(sample_bytes)
    (out_dir / f"{MODEL_NAME}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    configure_determinism(tf, args.seed)
    images, labels = load_dataset()
    train_index, test_index = split_indices(labels, args.seed)
    classifier, model = build_model(tf)
    train(tf, classifier, to_model_input(images[train_index]), labels[train_index], args)
    model_bytes = export_tflite(tf, model)
    probabilities, outputs = litert_predict(model_bytes, to_model_input(images[test_index]))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels[test_index]))
    sample_bytes = sample_archive(images, labels, test_index)
    meta = {
        **model_spec(model_bytes, outputs, accuracy),
        "dataset": dataset_spec(sample_bytes, train_index, test_index, args.seed),
        "training": training_spec(args, model.count_params()),
        "versions": versions(tf),
    }
    write_artifacts(args.out_dir, model_bytes, sample_bytes, meta)
    print(f"{MODEL_NAME}.tflite: {len(model_bytes)} bytes, sha256 {meta['sha256']}, test accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
