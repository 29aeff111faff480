"""Statistical drift reports over the prediction logs the server holds (``drift.stats``).

For a scope (the fleet, a group, a device, a model version) the reference window is compared
with the current window, feature by feature: the prediction confidence, the predicted class,
the inference latency, the input image statistics the devices log (``image_stats``: brightness,
contrast, sharpness as Laplacian variance, colour channel means; one feature ``image.<name>`` each)
and the first principal components of the feature vectors (PCA fitted on the reference, both
windows projected on it). Each window reads at most DRIFT_REPORT_MAX_ROWS
logs, the newest of it: the report's memory stays bounded whatever the table's size.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.models import PredictionLog
from drift import stats
from drift.models import DriftReport, ReportPolicy, ReportScope, ReportStatus
from sphere import live

PCA_COMPONENTS = 5
DRIFT_TOPIC = "drift"


class ReportError(ValueError):
    pass


def request_report(policy: ReportPolicy | None = None, *, by=None, now=None, **fields) -> DriftReport:
    """Create a pending report (from a policy, or from explicit fields) and queue it after commit."""
    from drift.tasks import run_report

    now = now or timezone.now()
    if policy is not None:
        fields = _fields_of(policy, now)
    report = DriftReport.objects.create(policy=policy, created_by=by, **fields)
    transaction.on_commit(lambda: run_report.delay(report.pk))
    return report


def _fields_of(policy: ReportPolicy, now) -> dict:
    return {
        "scope": policy.scope,
        "scope_value": policy.scope_value,
        "reference_start": policy.reference_start,
        "reference_end": policy.reference_end,
        "current_start": now - timedelta(hours=policy.current_hours),
        "current_end": now,
        "drift_share": policy.drift_share,
        "fdr": policy.fdr,
        "overrides": policy.overrides,
    }


def run_due_policies(now=None) -> int:
    now = now or timezone.now()
    due = 0
    for policy in ReportPolicy.objects.filter(enabled=True):
        if policy.last_run_at and policy.last_run_at > now - timedelta(minutes=policy.interval_minutes):
            continue
        with transaction.atomic():
            # Claimed by a conditional update: two beats racing create one report.
            claimed = ReportPolicy.objects.filter(pk=policy.pk, last_run_at=policy.last_run_at).update(last_run_at=now)
            if claimed:
                request_report(policy, now=now)
                due += 1
    return due


def run_report(pk: int) -> str:
    report = DriftReport.objects.filter(pk=pk, status=ReportStatus.PENDING).first()
    if report is None:
        return "skipped"
    try:
        result, rows = compute(report)
    except (ReportError, ValueError) as exc:
        return _finish(report, ReportStatus.FAILED, error=str(exc))
    report.reference_rows, report.current_rows = rows
    report.dataset_drift, report.share_of_drifted_features = result["dataset_drift"], result["share"]
    report.results = result
    return _finish(report, ReportStatus.DONE)


def _finish(report: DriftReport, status: str, *, error: str = "") -> str:
    report.status, report.error, report.finished_at = status, error, timezone.now()
    report.save()
    live.publish(
        DRIFT_TOPIC, "drift.report", {"id": report.pk, "status": status, "dataset_drift": report.dataset_drift}
    )
    return status


# --- Computing --------------------------------------------------------------------------------


def compute(report: DriftReport) -> tuple[dict, tuple[int, int]]:
    reference = _window(report, report.reference_start, report.reference_end)
    current = _window(report, report.current_start, report.current_end)
    if not reference["confidence"].size or not current["confidence"].size:
        raise ReportError(
            f"Not enough data: {reference['confidence'].size} reference and {current['confidence'].size} current "
            "prediction logs in this scope."
        )
    rows = (int(reference["confidence"].size), int(current["confidence"].size))
    reference_columns, current_columns = _features(reference, current)
    result = stats.compare_frames(
        reference_columns, current_columns, overrides=report.overrides, drift_share=report.drift_share, fdr=report.fdr
    )
    return _summary(result, reference_columns, current_columns), rows


def _window(report: DriftReport, start, end) -> dict[str, np.ndarray]:
    logs = _scoped(PredictionLog.objects.filter(created__gte=start, created__lt=end), report)
    rows = list(
        logs.order_by("-created").values_list("confidence", "label", "latency_ms", "features", "image_stats")[
            : settings.DRIFT_REPORT_MAX_ROWS
        ]
    )
    return {
        "confidence": np.array([row[0] for row in rows], dtype=float),
        "label": np.array([row[1] for row in rows], dtype=object),
        "latency_ms": np.array([np.nan if row[2] is None else row[2] for row in rows], dtype=float),
        "features": [None if row[3] is None else np.frombuffer(bytes(row[3]), dtype="<f4") for row in rows],
        "image_stats": [row[4] or {} for row in rows],
    }


def _scoped(logs, report: DriftReport):
    value = report.scope_value
    if report.scope == ReportScope.DEVICE:
        return logs.filter(device_id=value)
    if report.scope == ReportScope.GROUP:
        return logs.filter(device__group__name=value)
    if report.scope == ReportScope.MODEL_VERSION:
        return logs.filter(model_version=value)
    return logs


def _features(reference: dict, current: dict) -> tuple[dict, dict]:
    names = ["confidence", "label"]
    ref = {name: reference[name] for name in names}
    cur = {name: current[name] for name in names}
    if np.isfinite(reference["latency_ms"]).any() and np.isfinite(current["latency_ms"]).any():
        ref["latency_ms"], cur["latency_ms"] = reference["latency_ms"], current["latency_ms"]
    ref_images, cur_images = image_statistics(reference["image_stats"], current["image_stats"])
    ref.update(ref_images)
    cur.update(cur_images)
    ref_pcs, cur_pcs = principal_components(reference["features"], current["features"])
    ref.update(ref_pcs)
    cur.update(cur_pcs)
    return ref, cur


def image_statistics(reference: list[dict], current: list[dict]) -> tuple[dict, dict]:
    """One column per image statistic that both windows report (NaN where a log has none)."""
    names = sorted(_stat_names(reference) & _stat_names(current))
    column = lambda stats, name: np.array([s.get(name, np.nan) for s in stats], dtype=float)  # noqa: E731
    return (
        {f"image.{name}": column(reference, name) for name in names},
        {f"image.{name}": column(current, name) for name in names},
    )


def _stat_names(stats: list[dict]) -> set[str]:
    return {name for entry in stats for name, value in entry.items() if isinstance(value, int | float)}


def principal_components(reference: list, current: list, k: int = PCA_COMPONENTS) -> tuple[dict, dict]:
    """Both windows' feature vectors projected on the reference's first k principal axes. Only
    vectors of the reference's most common length count (a model change alters the length)."""
    ref, cur = _matrix(reference), None
    if ref is None or len(ref) < 2:
        return {}, {}
    cur = _matrix(current, ref.shape[1])
    if cur is None:
        return {}, {}
    mean = ref.mean(axis=0)
    _, _, axes = np.linalg.svd(ref - mean, full_matrices=False)
    axes = axes[: min(k, axes.shape[0])]
    project = lambda matrix: (matrix - mean) @ axes.T  # noqa: E731
    ref_scores, cur_scores = project(ref), project(cur)
    names = [f"pca_{i + 1}" for i in range(axes.shape[0])]
    return (
        {name: ref_scores[:, i] for i, name in enumerate(names)},
        {name: cur_scores[:, i] for i, name in enumerate(names)},
    )


def _matrix(vectors: list, length: int | None = None) -> np.ndarray | None:
    present = [vector for vector in vectors if vector is not None and vector.size]
    if not present:
        return None
    if length is None:
        lengths, counts = np.unique([vector.size for vector in present], return_counts=True)
        length = int(lengths[counts.argmax()])
    kept = [vector for vector in present if vector.size == length]
    return np.vstack(kept).astype(np.float64) if kept else None


def _summary(result, reference: dict, current: dict) -> dict:
    data = result.to_dict()
    for name, column in data["columns"].items():
        column["histogram"] = stats.histograms(reference[name], current[name], kind=column.get("kind")).to_dict()
    data["share"] = data["share_of_drifted_columns"]
    return data
