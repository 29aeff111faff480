"""Device bundles: what a model version is on the wire.

A bundle is a tar.gz the edge client unpacks (edge_client/bundles.py) and loads
(edge_client.pipeline.load_bundle)::

    manifest.json    {"format": 1, "version": "digits@4", "classes": [...], "feature_dim": 64,
                      "files": [{"path", "sha256", "size"}], ...}
    transform.json   scaler + PCA parameters (edge_client.transforms.FeatureTransform.to_params)
    knn.npz          the KNN reference set (edge_client.knn.KNN.to_state), no object arrays
    extractor.tflite optional: a feature extractor other than the one the client ships

The archive is built in memory (a few MB at most) with fixed member times and owners, so the
same model gives the same bytes and the same sha256. ``read_bundle`` applies the checks the
device applies (plain members only, manifest hashes, ``allow_pickle=False``) for the server's
own use (predictions, training against the champion).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from edge_client.knn import KNN
from edge_client.transforms import FeatureTransform

FORMAT = 1
MANIFEST, TRANSFORM, KNN_FILE, EXTRACTOR = "manifest.json", "transform.json", "knn.npz", "extractor.tflite"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # the edge client's default max_bytes


class BundleError(Exception):
    pass


@dataclass(frozen=True)
class BuiltBundle:
    data: bytes
    sha256: str
    manifest: dict

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class BundleContents:
    transform: FeatureTransform | None
    knn: KNN
    manifest: dict


def build_bundle(
    *,
    label: str,
    classes: list[str],
    transform: FeatureTransform | None,
    knn: KNN,
    feature_dim: int,
    extractor: bytes | None = None,
    extra: dict | None = None,
) -> BuiltBundle:
    files = {KNN_FILE: _npz_bytes(knn.to_state())}
    if transform is not None:
        files[TRANSFORM] = json.dumps(transform.to_params(), sort_keys=True).encode()
    if extractor is not None:
        files[EXTRACTOR] = extractor
    manifest = {
        "format": FORMAT,
        "version": label,
        "classes": list(classes),
        "feature_dim": int(feature_dim),
        **(extra or {}),
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(files.items())
        ],
    }
    files[MANIFEST] = json.dumps(manifest, sort_keys=True, indent=1).encode()
    data = _tar_gz(files)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle of {len(data)} bytes exceeds the devices' limit of {MAX_BUNDLE_BYTES}")
    return BuiltBundle(data, hashlib.sha256(data).hexdigest(), manifest)


def read_bundle(data: bytes) -> BundleContents:
    files = _untar(data)
    try:
        manifest = json.loads(files[MANIFEST])
    except KeyError:
        raise BundleError("bundle has no manifest.json") from None
    except ValueError as exc:
        raise BundleError(f"manifest.json: {exc}") from None
    _check_hashes(manifest, files)
    if KNN_FILE not in files:
        raise BundleError("bundle has no knn.npz")
    transform = None
    if TRANSFORM in files:
        transform = FeatureTransform.from_params(json.loads(files[TRANSFORM]))
    with np.load(io.BytesIO(files[KNN_FILE]), allow_pickle=False) as arrays:
        knn = KNN.from_state({key: arrays[key] for key in arrays.files})
    return BundleContents(transform, knn, manifest)


def _npz_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    return buffer.getvalue()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    # mtime=0 in the gzip header and in every member: identical models give identical bytes.
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _untar(data: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
                    raise BundleError(f"{member.name!r}: only plain top-level files are allowed")
                if member.name in files:
                    raise BundleError(f"{member.name}: duplicate member")
                files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"unreadable bundle: {exc}") from None
    return files


def _check_hashes(manifest, files: dict[str, bytes]) -> None:
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise BundleError('manifest.json: "files" must be a list')
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if path not in files:
            raise BundleError(f"manifest.json lists {path!r}, which the bundle lacks")
        if hashlib.sha256(files[path]).hexdigest() != entry.get("sha256"):
            raise BundleError(f"{path}: sha256 does not match manifest.json")
