"""Turning stored drift data into what a page shows: detector scores, report feature rows,
incident evidence. No queries here."""

from __future__ import annotations

import json

from drift.charts import histogram_svg
from drift.models import DriftStatus

MAX_MEASURES = 6
VERDICT_BUTTONS = {
    DriftStatus.CONFIRMED: "Confirm drift",
    DriftStatus.REJECTED: "Reject (false alarm)",
    DriftStatus.RESOLVED: "Mark resolved",
}


def number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)  # reports keep inf/NaN as strings (JSON has no such numbers)
    return f"{value:.4g}"


def measures(payload) -> dict[str, list[tuple[str, str]]]:
    """The detector's scores and settings (thresholds first) from an event's payload. The edge
    client sends ``{"scores": {...}, "params": {...}}``; other senders put the numbers at the top
    level, where names holding "threshold" are the thresholds."""
    if not isinstance(payload, dict):
        return {"scores": [], "settings": []}
    if isinstance(payload.get("scores"), dict) or isinstance(payload.get("params"), dict):
        scores, settings = _numbers(payload.get("scores")), _numbers(payload.get("params"))
    else:
        found = _numbers(payload)
        scores = [item for item in found if "threshold" not in item[0]]
        settings = [item for item in found if "threshold" in item[0]]
    settings.sort(key=lambda item: "threshold" not in item[0])
    return {"scores": scores[:MAX_MEASURES], "settings": settings[:MAX_MEASURES]}


def _numbers(values) -> list[tuple[str, str]]:
    if not isinstance(values, dict):
        return []
    return [
        (str(name), number(value))
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def feature_rows(report) -> list[dict]:
    """One row per feature of a finished report, with its reference-vs-current chart."""
    columns = (report.results or {}).get("columns", {})
    return [
        {
            "name": name,
            "test": column.get("test", ""),
            "score": number(column.get("drift_score")),
            "threshold": number(column.get("threshold")),
            "drifted": bool(column.get("drift_detected")),
            "corrected_p": number(column.get("adjusted_p_value")),
            "chart": histogram_svg(column["histogram"]) if column.get("histogram") else "",
        }
        for name, column in columns.items()
    ]


def evidence_slices(evidence: dict) -> list[dict]:
    """The slice candidates triage weighed (drift.triage), numbers formatted for a table."""
    return [
        {
            "slice": f"{candidate.get('attribute')} = {candidate.get('value')}",
            "drifting": candidate.get("drifting"),
            "size": candidate.get("size"),
            "coverage": _share(candidate.get("coverage")),
            "concentration": _share(candidate.get("concentration")),
            "rest_rate": _share(candidate.get("rest_rate")),
            "p_value": number(candidate.get("p_value")),
            "qualifies": bool(candidate.get("qualifies")),
        }
        for candidate in evidence.get("slices") or []
        if isinstance(candidate, dict)
    ]


def _share(value) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "—"


def shown_count(count: int, cap: int) -> str:
    return f"{cap}+" if count >= cap else str(count)
