"""Versioned snapshots of the adaptive state (KNN reference, transform, detectors), with rollback.

Each version ``n`` is two files in the state folder:

- ``v{n:06d}.npz``: the KNN's ``to_state()`` arrays (loaded with ``allow_pickle=False``);
- ``v{n:06d}.json``: the transform parameters, every detector's ``to_state()``, caller metadata,
  and the sha256 of the npz.

Both are written to a temp file, fsynced and put in place with ``os.replace``, the npz first:
the JSON is the commit record. A version counts only when its JSON parses and names the sha256
of the npz beside it, so a power cut at any point leaves the earlier versions loadable and at
worst an orphan npz or temp file, which the next snapshot cleans away. The last ``keep``
versions are kept; ``restore(n)`` rebuilds any of them.

>>> import tempfile
>>> import numpy as np
>>> from edge_client.knn import KNN
>>> manager = StateManager(tempfile.mkdtemp(), keep=2)
>>> knn = KNN(k=1).fit(np.array([[0.0], [1.0]]), [0, 1])
>>> [manager.snapshot(knn) for _ in range(3)], manager.versions()
([1, 2, 3], [2, 3])
>>> manager.restore(2).knn.predict(np.array([0.9])).label
1
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_client.detectors import detector_from_state
from edge_client.files import atomic_write
from edge_client.knn import KNN
from edge_client.transforms import FeatureTransform

FORMAT = 1
VERSION_FILE = re.compile(r"^v(\d{6,})\.(npz|json)$")


class StateError(ValueError):
    """A version is missing, incomplete or does not match its checksum."""


@dataclass
class Snapshot:
    version: int
    knn: KNN
    transform: FeatureTransform | None
    detectors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    created_at: float = 0.0


class StateManager:
    def __init__(self, directory, keep: int = 5):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(directory)
        self.keep = int(keep)
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- writing --------------------------------------------------------------------------------

    def snapshot(self, knn: KNN, transform: FeatureTransform | None = None, detectors=None, meta=None) -> int:
        """Write a new version; return its number once both files are durable."""
        self._clean_leftovers()
        version = self._next_version()
        npz = _npz_bytes(knn.to_state())
        atomic_write(self._path(version, "npz"), npz)
        document = {
            "format": FORMAT,
            "version": version,
            "created_at": time.time(),
            "npz_sha256": hashlib.sha256(npz).hexdigest(),
            "transform": transform.to_params() if transform is not None else None,
            "detectors": {name: detector.to_state() for name, detector in (detectors or {}).items()},
            "meta": meta or {},
        }
        atomic_write(self._path(version, "json"), json.dumps(document, allow_nan=False).encode())
        self._prune()
        return version

    # --- reading --------------------------------------------------------------------------------

    def versions(self) -> list[int]:
        """Complete, checksum-valid versions, oldest first."""
        return [n for n in self._numbers("json") if self._is_valid(n)]

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def restore(self, version: int | None = None) -> Snapshot:
        """Rebuild the given version (default: the latest valid one)."""
        version = self.latest() if version is None else int(version)
        if version is None:
            raise StateError(f"no saved state in {self.dir}")
        document = self._document(version)
        with np.load(self._path(version, "npz"), allow_pickle=False) as arrays:
            knn = KNN.from_state({key: arrays[key] for key in arrays.files})
        params = document["transform"]
        return Snapshot(
            version=version,
            knn=knn,
            transform=FeatureTransform.from_params(params) if params is not None else None,
            detectors={name: detector_from_state(state) for name, state in document["detectors"].items()},
            meta=document["meta"],
            created_at=document["created_at"],
        )

    # --- internals ------------------------------------------------------------------------------

    def _document(self, version: int) -> dict:
        try:
            document = json.loads(self._path(version, "json").read_text(encoding="utf-8"))
            npz = self._path(version, "npz").read_bytes()
        except (OSError, ValueError) as exc:
            raise StateError(f"state version {version} is missing or unreadable: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StateError(f"state version {version} has an unknown format")
        if hashlib.sha256(npz).hexdigest() != document.get("npz_sha256"):
            raise StateError(f"state version {version}: the npz does not match its checksum")
        return document

    def _is_valid(self, version: int) -> bool:
        try:
            self._document(version)
        except StateError:
            return False
        return True

    def _path(self, version: int, suffix: str) -> Path:
        return self.dir / f"v{version:06d}.{suffix}"

    def _numbers(self, suffix: str | None = None) -> list[int]:
        numbers = set()
        for path in self.dir.iterdir():
            match = VERSION_FILE.match(path.name)
            if match and (suffix is None or match.group(2) == suffix):
                numbers.add(int(match.group(1)))
        return sorted(numbers)

    def _next_version(self) -> int:
        # Past every number on disk, valid or not: a torn version's number is never reused, so
        # its orphan files cannot be mistaken for parts of a new one.
        numbers = self._numbers()
        return numbers[-1] + 1 if numbers else 1

    def _prune(self) -> None:
        valid = self.versions()
        keep = set(valid[-self.keep :])
        newest = valid[-1] if valid else 0
        for number in self._numbers():
            if number not in keep and number < newest:
                for suffix in ("npz", "json"):
                    self._path(number, suffix).unlink(missing_ok=True)

    def _clean_leftovers(self) -> None:
        for path in self.dir.glob(".tmp-*"):
            path.unlink(missing_ok=True)


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
