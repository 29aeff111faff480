"""Filling the labeling queue: candidates from every source become tasks, scored and folded.

- **Uncertainty** of a prediction, from its (top-k) class probabilities, by the method of
  LABELING_UNCERTAINTY: ``least_confidence`` 1 − p₁, ``margin`` 1 − (p₁ − p₂), ``entropy``
  H(p) / ln K (K the class set's size). Without probabilities the confidence stands for p₁ and the
  rest of the mass for p₂.
- **Priority** = uncertainty + LABELING_INCIDENT_BOOST when the sample belongs to an open drift
  incident (one with an event still pending or confirmed): samples that explain a live incident
  come first.
- **Folding**: the same scene seen by many devices is labeled once. A task's feature vector is
  hashed into a bucket (signs of 16 fixed random projections of the unit vector: near vectors
  share a bucket); a new task within LABELING_FOLD_DISTANCE of a pending task of its bucket is
  folded into it (status ``folded``, ``duplicate_of``) and takes its label when it is labeled.
  A task that carries an image folds only into one that does too: a labeler must see the scene,
  and an uncertain prediction logged without its image would otherwise hide a quarantined
  sample's picture behind a task nobody can judge.

Every source is idempotent: a task's ``key`` names its origin and is unique.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from labeling.models import ClassSet, LabelTask, TaskSource, TaskStatus

FOLD_BITS = 16
_PROJECTIONS: dict[int, np.ndarray] = {}


@dataclass
class Candidate:
    """A sample worth labeling, before it is a task."""

    key: str
    source: str
    model_version: str
    predicted_label: str = ""
    confidence: float | None = None
    probabilities: dict | None = None
    features: bytes | None = None
    device_id: object = None
    prediction_id: object = None
    drift_sample_id: int | None = None
    image_area: str = ""
    image_key: str = ""
    incident_id: int | None = None
    extra: dict = field(default_factory=dict)


def prediction_key(device_id, client_id) -> str:
    return f"prediction:{device_id}:{client_id}"


def drift_sample_key(sample_id: int) -> str:
    return f"drift-sample:{sample_id}"


def model_name(model_version: str) -> str:
    return model_version.split("@", 1)[0]


def class_sets_for(versions) -> dict[str, ClassSet]:
    names = {model_name(version) for version in versions if version}
    return {class_set.name: class_set for class_set in ClassSet.objects.filter(name__in=names)}


# --- Scores -----------------------------------------------------------------------------------


def uncertainty(
    probabilities: dict | None, confidence: float | None, n_classes: int, method: str | None = None
) -> float:
    method = method or settings.LABELING_UNCERTAINTY
    p = _distribution(probabilities, confidence)
    if p.size == 0:
        return 0.0
    if method == "least_confidence":
        return float(1.0 - p[0])
    if method == "margin":
        return float(1.0 - (p[0] - (p[1] if p.size > 1 else 0.0)))
    if method == "entropy":
        nonzero = p[p > 0]
        return float(-(nonzero * np.log(nonzero)).sum() / math.log(max(n_classes, 2)))
    raise ValueError(f"Unknown uncertainty method {method!r}: least_confidence, margin or entropy.")


def _distribution(probabilities: dict | None, confidence: float | None) -> np.ndarray:
    """Descending probabilities; a top-k that does not sum to 1 keeps its remainder as one more
    entry, so entropy and margin see the mass the device did not send."""
    values = sorted((float(v) for v in (probabilities or {}).values()), reverse=True)
    if not values and confidence is not None:
        values = [float(confidence)]
    rest = 1.0 - sum(values)
    if values and rest > 1e-9:
        values = sorted([*values, rest], reverse=True)
    return np.array(values, dtype=float)


def priority(uncertainty_score: float, in_open_incident: bool) -> float:
    return uncertainty_score + (settings.LABELING_INCIDENT_BOOST if in_open_incident else 0.0)


# --- Folding ----------------------------------------------------------------------------------


def fold_key(features: bytes | None) -> str:
    vector = _unit(features)
    if vector is None:
        return ""
    bits = (_projections(vector.size) @ vector) >= 0
    return f"{vector.size}:{int(np.packbits(bits).view('>u2')[0]):04x}"


def _unit(features: bytes | None) -> np.ndarray | None:
    if not features:
        return None
    vector = np.frombuffer(bytes(features), dtype="<f4").astype(np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else None


def _projections(dimension: int) -> np.ndarray:
    # Fixed per dimension (seeded), so a key computed today matches one computed next month.
    if dimension not in _PROJECTIONS:
        _PROJECTIONS[dimension] = np.random.default_rng(dimension).standard_normal((FOLD_BITS, dimension))
    return _PROJECTIONS[dimension]


def _fold_target(task: LabelTask, pending: list[LabelTask]) -> LabelTask | None:
    limit = settings.LABELING_FOLD_DISTANCE
    if not limit or task.features is None or not pending:
        return None
    vector = np.frombuffer(bytes(task.features), dtype="<f4")
    same_size = [other for other in pending if other.features is not None and len(other.features) == len(task.features)]
    if not same_size:
        return None
    matrix = np.vstack([np.frombuffer(bytes(other.features), dtype="<f4") for other in same_size])
    distances = np.linalg.norm(matrix - vector, axis=1)
    nearest = int(distances.argmin())
    return same_size[nearest] if distances[nearest] <= limit else None


# --- Enqueueing -------------------------------------------------------------------------------


def enqueue(candidates: list[Candidate]) -> list[LabelTask]:
    """Create the tasks not queued yet (by key); return the new ones. Candidates of models
    without a class set are left out: their labels could not be checked."""
    if not candidates:
        return []
    class_sets = class_sets_for(c.model_version for c in candidates)
    keys = [c.key for c in candidates]
    known = set(LabelTask.objects.filter(key__in=keys).values_list("key", flat=True))
    open_incidents = _open_incidents({c.incident_id for c in candidates if c.incident_id})
    created = []
    with transaction.atomic():
        for candidate in candidates:
            class_set = class_sets.get(model_name(candidate.model_version))
            if class_set is None or candidate.key in known:
                continue
            known.add(candidate.key)
            task = _create(candidate, class_set, candidate.incident_id in open_incidents)
            if task is not None:
                created.append(task)
    return created


def _open_incidents(ids: set[int]) -> set[int]:
    if not ids:
        return set()
    from drift.models import DriftEvent, DriftStatus

    # Open: some event of it is still pending or confirmed (not rejected nor resolved).
    live = DriftEvent.objects.filter(incident__in=ids, status__in=(DriftStatus.PENDING, DriftStatus.CONFIRMED))
    return set(live.values_list("incident", flat=True).distinct())


def _create(candidate: Candidate, class_set: ClassSet, in_open_incident: bool) -> LabelTask | None:
    score = uncertainty(candidate.probabilities, candidate.confidence, len(class_set.classes))
    task = LabelTask(
        key=candidate.key,
        source=candidate.source,
        class_set=class_set,
        device_id=candidate.device_id,
        prediction_id=candidate.prediction_id,
        drift_sample_id=candidate.drift_sample_id,
        image_area=candidate.image_area,
        image_key=candidate.image_key,
        model_version=candidate.model_version,
        predicted_label=candidate.predicted_label,
        confidence=candidate.confidence,
        probabilities=candidate.probabilities,
        features=candidate.features,
        uncertainty=score,
        incident_id=candidate.incident_id,
        priority=priority(score, in_open_incident),
        fold_key=fold_key(candidate.features),
    )
    target = _fold_target(task, _bucket(task)) if candidate.source != TaskSource.FEEDBACK else None
    if target is not None:
        task.status, task.duplicate_of = TaskStatus.FOLDED, target
    try:
        with transaction.atomic():  # a savepoint: another worker may have queued this key meanwhile
            task.save()
    except IntegrityError:
        return None
    if target is not None:
        # The representative carries the bucket's weight: a scene many devices saw comes first.
        LabelTask.objects.filter(pk=target.pk).update(duplicate_count=F("duplicate_count") + 1)
        target.duplicate_count += 1
    return task


def _bucket(task: LabelTask) -> list[LabelTask]:
    if not task.fold_key:
        return []
    pending = LabelTask.objects.filter(
        class_set=task.class_set, fold_key=task.fold_key, status=TaskStatus.PENDING, gold_label=""
    )
    if task.image_key:
        pending = pending.exclude(image_key="")
    return list(pending.only("pk", "features", "duplicate_count")[:500])


def recompute_priorities(model: ClassSet | str, method: str | None = None) -> int:
    """Score the pending tasks of a class set (or of a model, by name) again: a new version was
    promoted, or the method changed. Return how many. In batches: the queue may hold hundreds of
    thousands. Safe to run twice, or twice at once: the scores depend on the tasks alone."""
    if isinstance(model, ClassSet):
        class_set = model
    else:
        class_set = ClassSet.objects.filter(name=model_name(model)).first()
    if class_set is None:
        return 0
    n_classes = len(class_set.classes)
    pending = LabelTask.objects.filter(class_set=class_set, status=TaskStatus.PENDING)
    open_incidents = _open_incidents(set(pending.exclude(incident=None).values_list("incident", flat=True)))
    updated = 0
    for batch in _batches(pending.only("pk", "probabilities", "confidence", "incident_id"), 2000):
        for task in batch:
            task.uncertainty = uncertainty(task.probabilities, task.confidence, n_classes, method)
            task.priority = priority(task.uncertainty, task.incident_id in open_incidents)
        LabelTask.objects.bulk_update(batch, ["uncertainty", "priority"])
        updated += len(batch)
    return updated


def _batches(queryset, size: int):
    last = 0
    while True:
        batch = list(queryset.filter(pk__gt=last).order_by("pk")[:size])
        if not batch:
            return
        yield batch
        last = batch[-1].pk
