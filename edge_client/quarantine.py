"""A bounded, persisted quarantine of the samples the monitors flagged.

A sample lands here when a monitor fired on it or it lies far from the reference set. The
adapter reads the quarantine to look for groups it can pseudo-label; whatever it cannot label
stays here (and in the store's outbox, for the server) as "unknown".

Persistence: one ``q{seq:012d}.npz`` per sample (transformed features, the input image when
``keep_images``, and its metadata as a JSON string; loaded with ``allow_pickle=False``), each
written to a temp file, fsynced and put in place with ``os.replace``. Reopening the folder
gives back the same samples in the same order; a torn temp file is ignored and removed.

Bound and eviction: at most ``max_samples`` samples and ``max_bytes`` of sample files; adding
one more evicts the oldest (lowest sequence number) first until both bounds hold. The newest
samples are the ones that describe the current drift, which is what the adapter and the server
need.

If a ``store`` is given, each sample is also appended to it as a ``quarantine_sample`` record
(features, and the image if kept, as ``.npy`` attachments), linked to its drift event, so it is
shipped to the server even if the device adapts to it locally.

>>> import tempfile
>>> import numpy as np
>>> folder = tempfile.mkdtemp()
>>> quarantine = Quarantine(folder, max_samples=2)
>>> for i in range(3):
...     _ = quarantine.add(np.full(4, float(i)), label=1, confidence=0.6, distance=3.0, reasons=["far"])
>>> [float(sample.features[0]) for sample in Quarantine(folder, max_samples=2).samples()]
[1.0, 2.0]
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_client.files import atomic_write
from edge_client.store import QUARANTINE_SAMPLE

SAMPLE_FILE = re.compile(r"^q(\d{12})\.npz$")


@dataclass(frozen=True)
class QuarantinedSample:
    id: str
    seq: int
    created_at: float
    features: np.ndarray  # transformed, as the KNN sees them
    label: int  # the KNN's prediction when it was quarantined
    confidence: float
    distance: float  # mean neighbour distance
    reasons: tuple[str, ...]  # names of the monitors that fired, and/or "far"
    event_id: str | None = None
    image: np.ndarray | None = None


class Quarantine:
    def __init__(
        self,
        directory,
        *,
        max_samples: int = 500,
        max_bytes: int = 16 * 1024 * 1024,
        keep_images: bool = True,
        store=None,
        model_version="",
    ):
        if int(max_samples) < 1 or int(max_bytes) < 1:
            raise ValueError(f"max_samples and max_bytes must be >= 1, got {max_samples}, {max_bytes}")
        self.dir = Path(directory)
        self.max_samples = int(max_samples)
        self.max_bytes = int(max_bytes)
        self.keep_images = bool(keep_images)
        self.store = store
        self.model_version = model_version
        self.dir.mkdir(parents=True, exist_ok=True)
        self._samples: dict[str, QuarantinedSample] = {}  # insertion (= seq) order
        self._sizes: dict[str, int] = {}  # file size of each sample
        self._load()

    @classmethod
    def from_config(cls, config, *, store=None, model_version="") -> Quarantine:
        section = config.quarantine
        return cls(
            config.path("quarantine"),
            max_samples=section.max_samples,
            max_bytes=section.max_bytes,
            keep_images=section.keep_images,
            store=store,
            model_version=model_version,
        )

    def __len__(self) -> int:
        return len(self._samples)

    def samples(self) -> list[QuarantinedSample]:
        return list(self._samples.values())

    def features(self) -> np.ndarray:
        """(n, d) features of the quarantined samples, oldest first."""
        return np.stack([sample.features for sample in self._samples.values()]) if self._samples else np.zeros((0, 0))

    def add(self, features, *, label, confidence, distance, reasons, image=None, event_id=None) -> QuarantinedSample:
        """Quarantine one sample (durably); evicts the oldest ones past ``max_samples``."""
        sample = QuarantinedSample(
            id=str(uuid.uuid4()),
            seq=self._next_seq(),
            created_at=time.time(),
            features=np.asarray(features, dtype=np.float64).copy(),
            label=int(label),
            confidence=float(confidence),
            distance=float(distance),
            reasons=tuple(reasons),
            event_id=event_id,
            image=None if image is None or not self.keep_images else np.asarray(image, dtype=np.float64).copy(),
        )
        self._sizes[sample.id] = self._write(sample)
        self._samples[sample.id] = sample
        if self.store is not None:
            self._log(sample)
        self._evict()
        return sample

    def remove(self, ids) -> int:
        """Take samples out (adapted to, or reviewed); returns how many were here."""
        removed = 0
        for sample_id in ids:
            sample = self._samples.pop(sample_id, None)
            self._sizes.pop(sample_id, None)
            if sample is not None:
                self._file(sample.seq).unlink(missing_ok=True)
                removed += 1
        return removed

    def clear(self) -> None:
        self.remove(list(self._samples))

    # --- internals ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._last_seq += 1
        return self._last_seq

    def _evict(self) -> None:
        excess = len(self._samples) - self.max_samples
        if excess > 0:
            self.remove(list(self._samples)[:excess])
        total = sum(self._sizes.values())
        while total > self.max_bytes and len(self._samples) > 1:  # the newest stays, whatever its size
            oldest = next(iter(self._samples))
            total -= self._sizes[oldest]
            self.remove([oldest])

    def _file(self, seq: int) -> Path:
        return self.dir / f"q{seq:012d}.npz"

    def _write(self, sample: QuarantinedSample) -> int:
        meta = {
            "id": sample.id,
            "created_at": sample.created_at,
            "label": sample.label,
            "confidence": sample.confidence,
            "distance": sample.distance,
            "reasons": list(sample.reasons),
            "event_id": sample.event_id,
        }
        arrays = {"features": sample.features, "meta": np.array(json.dumps(meta))}
        if sample.image is not None:
            arrays["image"] = sample.image
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(self._file(sample.seq), buffer.getvalue(), sync_dir=False)
        return len(buffer.getvalue())

    def _load(self) -> None:
        for leftover in self.dir.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        seqs = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := SAMPLE_FILE.match(p.name)))
        self._last_seq = seqs[-1] if seqs else 0
        for seq in seqs:
            sample = self._read(seq)
            if sample is not None:
                self._samples[sample.id] = sample
                self._sizes[sample.id] = self._file(seq).stat().st_size
        self._evict()  # a smaller max_samples than last time

    def _read(self, seq: int) -> QuarantinedSample | None:
        try:
            with np.load(self._file(seq), allow_pickle=False) as arrays:
                meta = json.loads(str(arrays["meta"]))
                image = arrays["image"] if "image" in arrays.files else None
                features = arrays["features"]
        except (OSError, ValueError, KeyError, EOFError):
            # os.replace makes files whole or absent; anything else was not written by us.
            return None
        return QuarantinedSample(
            id=meta["id"],
            seq=seq,
            created_at=meta["created_at"],
            features=features,
            label=meta["label"],
            confidence=meta["confidence"],
            distance=meta["distance"],
            reasons=tuple(meta["reasons"]),
            event_id=meta["event_id"],
            image=image,
        )

    def _log(self, sample: QuarantinedSample) -> None:
        payload = {
            "model_version": self.model_version,
            "label": str(sample.label),
            "confidence": sample.confidence,
            "neighbour_distance": sample.distance,
            "reasons": list(sample.reasons),
        }
        attachments = {"features.npy": _npy(sample.features.astype(np.float32))}
        if sample.image is not None:
            attachments["image.npy"] = _npy(sample.image.astype(np.float32))
        self.store.append(
            QUARANTINE_SAMPLE, payload, attachments=attachments, parent=sample.event_id, item_id=sample.id
        )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
