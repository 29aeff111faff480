"""Heuristic, label-free adaptation: pseudo-label only what is compact and unambiguous.

``HeuristicAdapter.adapt(quarantine)`` groups the quarantined samples by distance-threshold
(leader) clustering: each sample joins the nearest group centre within ``radius``, else starts
a group. A group is pseudo-labelled only when all of these hold:

- it has at least ``min_group_size`` samples (one odd frame is not a concept);
- it is compact: the RMS distance of its members to their centre is at most ``max_spread``;
- it is consistently near one class: the KNN's predictions for its members agree on one label
  for at least ``min_agreement`` of them (0.8 by default).

Its samples are then added to the KNN reference under that label (the KNN stays bounded: its
own eviction policy makes room) and leave the quarantine. Any other group stays quarantined as
"unknown", for the server and a human to label. Every adaptation is recorded by an
``AdaptationTracker`` together with the state version saved just before it, so the pipeline can
roll it back.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_client.files import atomic_write_json
from edge_client.knn import KNN


@dataclass(frozen=True)
class GroupDecision:
    sample_ids: tuple[str, ...]
    size: int
    spread: float
    label: int  # the majority KNN prediction
    agreement: float  # share of members predicted as `label`
    accepted: bool
    reason: str  # why it was refused ("" when accepted)


@dataclass(frozen=True)
class Adaptation:
    id: str
    at: float
    label: int
    count: int
    sample_ids: list[str]
    spread: float
    agreement: float
    version_before: int | None = None  # state version to restore to undo it
    rolled_back: bool = False


def leader_clusters(features: np.ndarray, radius: float) -> np.ndarray:
    """Group index of each row: the nearest existing centre within ``radius``, else a new group.

    Centres are running means, so the order of the rows matters a little; the quarantine hands
    them over oldest first, which keeps the grouping reproducible.

    >>> leader_clusters(np.array([[0.0], [0.1], [5.0], [5.2], [0.05]]), radius=1.0).tolist()
    [0, 0, 1, 1, 0]
    """
    centres, counts = np.zeros((0, features.shape[1])), []
    groups = np.empty(len(features), dtype=np.int64)
    for i, row in enumerate(features):
        distances = np.sqrt(((centres - row) ** 2).sum(axis=1)) if counts else np.zeros(0)
        nearest = int(distances.argmin()) if len(distances) else -1
        if nearest >= 0 and distances[nearest] <= radius:
            counts[nearest] += 1
            centres[nearest] += (row - centres[nearest]) / counts[nearest]
        else:
            nearest = len(counts)
            centres = np.vstack([centres, row])
            counts.append(1)
        groups[i] = nearest
    return groups


def reference_distance_threshold(knn: KNN, quantile: float = 0.99, factor: float = 1.5) -> float:
    """A "far from the reference" limit: ``factor`` times the ``quantile`` of the references'
    own mean distance to their k nearest other references (leave-one-out)."""
    x, _ = knn.reference
    k = min(knn.k + 1, len(x))
    # ‖a‖² + ‖b‖² − 2ab: an n×n matrix instead of the n×n×d broadcast (10 MB at 200×32),
    # which set the client's peak memory.
    norms = np.einsum("ij,ij->i", x, x)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (x @ x.T), 0.0)
    nearest = np.sqrt(np.sort(squared, axis=1)[:, 1:k])  # column 0 is the reference itself
    return float(factor * np.quantile(nearest.mean(axis=1), quantile))


@dataclass
class HeuristicAdapter:
    knn: KNN
    radius: float
    max_spread: float
    min_group_size: int = 5
    min_agreement: float = 0.8
    decisions: list[GroupDecision] = field(default_factory=list)

    def __post_init__(self):
        if not 0.5 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0.5, 1], got {self.min_agreement}")
        if self.radius <= 0 or self.max_spread <= 0 or self.min_group_size < 1:
            raise ValueError("radius and max_spread must be > 0 and min_group_size >= 1")

    @classmethod
    def for_reference(cls, knn: KNN, **kwargs) -> HeuristicAdapter:
        """Scale radius and spread to the reference set's own neighbour distances."""
        scale = reference_distance_threshold(knn, quantile=0.5, factor=1.0)
        kwargs.setdefault("radius", 2.0 * scale)
        kwargs.setdefault("max_spread", 1.0 * scale)
        return cls(knn, **kwargs)

    def decide(self, features: np.ndarray, ids) -> list[GroupDecision]:
        """Judge each group of the given samples; changes nothing."""
        if len(features) == 0:
            return []
        groups = leader_clusters(features, self.radius)
        labels = self.knn.predict_batch(features).labels
        return [self._judge(features[groups == g], labels[groups == g], ids, groups == g) for g in np.unique(groups)]

    def _judge(self, members, labels, ids, mask) -> GroupDecision:
        spread = float(np.sqrt(((members - members.mean(axis=0)) ** 2).sum(axis=1).mean()))
        counts = np.bincount(labels)
        label, agreement = int(counts.argmax()), float(counts.max() / len(labels))
        reason = ""
        if len(members) < self.min_group_size:
            reason = f"only {len(members)} samples (< {self.min_group_size})"
        elif spread > self.max_spread:
            reason = f"spread {spread:.3g} > {self.max_spread:.3g}"
        elif agreement < self.min_agreement:
            reason = f"only {agreement:.0%} agree on class {label} (< {self.min_agreement:.0%})"
        sample_ids = tuple(i for i, keep in zip(ids, mask, strict=True) if keep)
        return GroupDecision(sample_ids, len(members), spread, label, agreement, not reason, reason)

    def adapt(self, quarantine) -> list[GroupDecision]:
        """Pseudo-label the acceptable groups into the KNN and take them out of quarantine."""
        samples = quarantine.samples()
        by_id = {sample.id: sample for sample in samples}
        self.decisions = self.decide(quarantine.features(), [sample.id for sample in samples])
        for decision in self.decisions:
            if decision.accepted:
                for sample_id in decision.sample_ids:
                    self.knn.add(by_id[sample_id].features, decision.label)
                quarantine.remove(decision.sample_ids)
        return self.decisions


class AdaptationTracker:
    """Every adaptation (what, when, how many, which class), persisted as one JSON file written
    atomically; at most ``max_entries`` kept, the oldest dropped first."""

    def __init__(self, path=None, max_entries: int = 1000):
        self.path = Path(path) if path is not None else None
        self.max_entries = int(max_entries)
        self.entries: list[Adaptation] = self._load()

    def record(self, decision: GroupDecision, version_before: int | None) -> Adaptation:
        entry = Adaptation(
            id=str(uuid.uuid4()),
            at=time.time(),
            label=decision.label,
            count=decision.size,
            sample_ids=list(decision.sample_ids),
            spread=decision.spread,
            agreement=decision.agreement,
            version_before=version_before,
        )
        self.entries = [*self.entries, entry][-self.max_entries :]
        self._save()
        return entry

    def last(self, include_rolled_back: bool = False) -> Adaptation | None:
        live = [entry for entry in self.entries if include_rolled_back or not entry.rolled_back]
        return live[-1] if live else None

    def get(self, adaptation_id: str) -> Adaptation:
        for entry in self.entries:
            if entry.id == adaptation_id:
                return entry
        raise KeyError(f"no adaptation {adaptation_id!r}")

    def mark_rolled_back(self, since: Adaptation) -> None:
        """Mark ``since`` and every later adaptation as undone (restoring an older state undoes them all)."""
        start = self.entries.index(since)
        self.entries = [
            Adaptation(**{**asdict(entry), "rolled_back": True}) if i >= start else entry
            for i, entry in enumerate(self.entries)
        ]
        self._save()

    def _load(self) -> list[Adaptation]:
        if self.path is None or not self.path.exists():
            return []
        return [Adaptation(**entry) for entry in json.loads(self.path.read_text(encoding="utf-8"))]

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, [asdict(entry) for entry in self.entries], sync_dir=False)
