"""Model versions and aliases: registering a bundle, moving an alias (with its history), and
answering "which version was X at time T" and "what ran on this device at time T".

Aliases replace MLflow's deprecated stages: ``champion`` is what rollouts fall back to and new
candidates must beat, ``challenger`` is a candidate that won its evaluation. Every move writes an
AliasEvent; the current Alias row is a cache of the newest event.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from edge_client.knn import KNN
from edge_client.pipeline import BUNDLE_KNN, BUNDLE_TRANSFORM, SHIPPED_REFERENCE
from edge_client.transforms import FeatureTransform
from registry.bundles import BuiltBundle, build_bundle, read_bundle
from registry.models import CHAMPION, Alias, AliasEvent, ModelFamily, ModelVersion, VersionStatus

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
BUNDLE_URL = "/api/v1/device/bundles/{id}"


class VersionNotFound(LookupError):
    pass


# --- registering ------------------------------------------------------------------------------


def register_version(
    family: ModelFamily,
    built: BuiltBundle,
    *,
    feature_dim: int,
    metrics: dict | None = None,
    params: dict | None = None,
    parent: ModelVersion | None = None,
    snapshot=None,
    training_job=None,
    policy=None,
    incidents=(),
    mlflow_run_id: str = "",
    source: str = "training",
    created_by=None,
    min_memory_mb: int = 0,
    runtime: dict | None = None,
    number: int | None = None,
) -> ModelVersion:
    """Store the bundle in the artifacts storage and record the version. ``number`` is the
    next free one unless given (a bundle built for ``label`` must know its number first:
    use :func:`next_number` inside the same transaction)."""
    with transaction.atomic():
        ModelFamily.objects.select_for_update().get(pk=family.pk)  # numbers are handed out one at a time
        number = number or next_number(family)
        key = f"models/{family.name}/{family.name}-{number}-{built.sha256[:12]}.tar.gz"
        saved = storages[ARTIFACTS].save(key, ContentFile(built.data))
        try:
            version = ModelVersion.objects.create(
                family=family,
                number=number,
                bundle_key=saved,
                bundle_sha256=built.sha256,
                bundle_size=built.size,
                manifest=built.manifest,
                classes=built.manifest.get("classes", []),
                feature_dim=feature_dim,
                metrics=metrics or {},
                params=params or {},
                parent=parent,
                snapshot=snapshot,
                training_job=training_job,
                policy=policy,
                mlflow_run_id=mlflow_run_id,
                source=source,
                created_by=created_by,
                min_memory_mb=min_memory_mb,
                runtime=runtime or {},
            )
        except Exception:
            storages[ARTIFACTS].delete(saved)  # no bundle without its row
            raise
        if incidents:
            version.incidents.set(incidents)
    return version


def next_number(family: ModelFamily) -> int:
    return (family.versions.aggregate(top=Max("number"))["top"] or 0) + 1


def archive_version(version: ModelVersion, reason: str) -> ModelVersion:
    if version.aliases.exists():
        raise ValueError(
            f"{version.label} still has aliases ({', '.join(version.aliases.values_list('name', flat=True))})"
        )
    version.status, version.archived_reason = VersionStatus.ARCHIVED, reason
    version.save(update_fields=["status", "archived_reason"])
    return version


def ensure_shipped_version(family: ModelFamily) -> ModelVersion | None:
    """The reference the edge client ships (edge_client/models/digits_reference) as version 1
    and champion of the family it belongs to, so rollouts have a last known good version and
    training a champion to beat. Other families start with their first trained version."""
    if family.versions.exists() or family.name != "digits" or not (SHIPPED_REFERENCE / BUNDLE_KNN).is_file():
        return family.versions.filter(number=1).first()
    import json

    import numpy as np

    transform = FeatureTransform.from_params(json.loads((SHIPPED_REFERENCE / BUNDLE_TRANSFORM).read_text()))
    with np.load(SHIPPED_REFERENCE / BUNDLE_KNN, allow_pickle=False) as arrays:
        knn = KNN.from_state({key: arrays[key] for key in arrays.files})
    with transaction.atomic():
        ModelFamily.objects.select_for_update().get(pk=family.pk)
        if family.versions.exists():  # another process registered it meanwhile
            return family.versions.get(number=1)
        label = f"{family.name}@1"
        built = build_bundle(
            label=label, classes=family.class_set.classes, transform=transform, knn=knn, feature_dim=transform.input_dim
        )
        version = register_version(
            family, built, feature_dim=transform.input_dim, source="shipped", number=1, params={"origin": "shipped"}
        )
        move_alias(family, CHAMPION, version, reason="the reference the edge client ships")
    return version


# --- aliases ----------------------------------------------------------------------------------


def move_alias(
    family: ModelFamily, alias: str, version: ModelVersion | None, *, by=None, reason: str = ""
) -> AliasEvent | None:
    """Point ``alias`` at ``version`` (None removes it). Returns the history row, or None when
    the alias already pointed there. A new champion re-orders the labeling queue."""
    if version is not None and version.family_id != family.pk:
        raise ValueError(f"{version.label} is not a version of {family.name}")
    if version is not None and version.status == VersionStatus.ARCHIVED:
        raise ValueError(f"{version.label} is archived")
    with transaction.atomic():
        current = Alias.objects.select_for_update().filter(family=family, name=alias).first()
        previous = current.version if current else None
        if previous == version:
            return None
        if version is None:
            current.delete()
        elif current is None:
            Alias.objects.create(family=family, name=alias, version=version)
        else:
            current.version, current.updated = version, timezone.now()
            current.save(update_fields=["version", "updated"])
        event = AliasEvent.objects.create(
            family=family, alias=alias, version=version, previous=previous, by=by, reason=reason
        )
        if alias == CHAMPION:
            _recompute_priorities_after_commit(family)
        _mirror_after_commit(family)
    _publish_alias(event)
    return event


def _mirror_after_commit(family: ModelFamily) -> None:
    """MLflow's aliases follow Sphere's (the source of truth) on whatever path moved them."""
    from registry import tasks, tracking

    if tracking.enabled():
        tasks.mirror_aliases.delay_on_commit(family.pk)


def _recompute_priorities_after_commit(family: ModelFamily) -> None:
    from labeling import tasks as labeling_tasks

    labeling_tasks.recompute_priorities.delay_on_commit(family.class_set_id)


def _publish_alias(event: AliasEvent) -> None:
    from sphere.live import publish

    publish(
        "registry",
        "registry.alias",
        {
            "family": event.family.name,
            "alias": event.alias,
            "version": event.version.label if event.version else None,
            "previous": event.previous.label if event.previous else None,
            "at": event.at,
        },
    )


def alias_version(family: ModelFamily, alias: str) -> ModelVersion | None:
    found = Alias.objects.select_related("version__family").filter(family=family, name=alias).first()
    return found.version if found else None


def alias_at(family: ModelFamily, alias: str, when: datetime) -> ModelVersion | None:
    """Where ``alias`` pointed at ``when`` (None: nowhere)."""
    event = (
        AliasEvent.objects.select_related("version__family")
        .filter(family=family, alias=alias, at__lte=when)
        .order_by("-at", "-id")
        .first()
    )
    return event.version if event else None


def aliases_at(family: ModelFamily, when: datetime) -> dict[str, str]:
    """Every alias of the family at ``when`` → version label."""
    names = AliasEvent.objects.filter(family=family, at__lte=when).values_list("alias", flat=True).distinct()
    found = {name: alias_at(family, name, when) for name in names}
    return {name: version.label for name, version in sorted(found.items()) if version is not None}


def version_on_device_at(device, when: datetime) -> str:
    """The model version ``device`` reported in its last heartbeat at or before ``when``."""
    from devices.models import Telemetry

    row = Telemetry.objects.filter(device=device, received_at__lte=when).order_by("-received_at").first()
    return row.model_version if row else ""


def resolve(family_name: str, ref: str) -> ModelVersion:
    """A version by alias (``champion``), number (``4``) or label (``digits@4``)."""
    family = ModelFamily.objects.filter(name=family_name).first()
    if family is None:
        raise VersionNotFound(f"no model family {family_name!r}")
    ref = str(ref).strip()
    if "@" in ref:
        name, _, ref = ref.partition("@")
        if name != family_name:
            raise VersionNotFound(f"{name}@{ref} is not a version of {family_name}")
    if ref.isdigit():
        version = family.versions.select_related("family").filter(number=int(ref)).first()
    else:
        version = alias_version(family, ref)
    if version is None:
        raise VersionNotFound(f"{family_name} has no version or alias {ref!r}")
    return version


def parse_label(label: str) -> tuple[str, int] | None:
    """``digits@4`` → ("digits", 4); anything else → None."""
    name, _, number = (label or "").partition("@")
    return (name, int(number)) if name and number.isdigit() else None


# --- serving ----------------------------------------------------------------------------------


def bundle_url(version: ModelVersion) -> str:
    return BUNDLE_URL.format(id=version.pk)


def desired_model(version: ModelVersion) -> dict:
    """The ``model`` entry of a device's desired state (edge_client/bundles.py)."""
    return {
        "version": version.label,
        "sha256": version.bundle_sha256,
        "url": bundle_url(version),
        "size": version.bundle_size,
    }


@dataclass(frozen=True)
class LoadedModel:
    version_id: int
    label: str
    classes: list[str]
    transform: FeatureTransform | None
    knn: KNN

    @property
    def feature_dim(self) -> int:
        return self.transform.input_dim if self.transform is not None else self.knn.dim

    def predict(self, features):
        """(labels as class names, confidences, probabilities) for a batch of extractor outputs."""
        import numpy as np

        x = np.asarray(features, dtype=np.float64)
        if self.transform is not None:
            x = self.transform.transform(x)
        batch = self.knn.predict_batch(x)
        names = [self.classes[i] if 0 <= i < len(self.classes) else str(i) for i in batch.labels.tolist()]
        return names, batch.confidences, batch.probabilities


_cache: OrderedDict[str, LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 8


def load_model(version: ModelVersion) -> LoadedModel:
    """The version's bundle read and checked once per process (keyed by its sha256)."""
    with _cache_lock:
        if version.bundle_sha256 in _cache:
            _cache.move_to_end(version.bundle_sha256)
            return _cache[version.bundle_sha256]
    with storages[ARTIFACTS].open(version.bundle_key, "rb") as handle:
        data = handle.read()
    import hashlib

    if hashlib.sha256(data).hexdigest() != version.bundle_sha256:
        raise ValueError(f"{version.label}: stored bundle does not match its sha256")
    contents = read_bundle(data)
    loaded = LoadedModel(version.pk, version.label, list(version.classes), contents.transform, contents.knn)
    with _cache_lock:
        _cache[version.bundle_sha256] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded
