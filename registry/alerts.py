"""The alert rule kind the registry adds to drift's rules (registered in RegistryConfig.ready):

- ``rollout_halted``: ``window_hours`` (default 24), ``family`` (optional, a family name) —
  rollouts halted (automatically on a failing gate, or rolled back by an operator) in the window.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from drift.alerts.evaluate import positive_int
from drift.alerts.registry import Finding, register_kind
from registry.models import Rollout, RolloutStatus


def register() -> None:
    register_kind("rollout_halted", "Rollout halted", validate_halted, halted_findings)


def validate_halted(parameters: dict) -> dict:
    parameters["window_hours"] = positive_int(parameters, "window_hours", 24)
    if not isinstance(parameters.get("family", ""), str):
        raise ValueError("family must be a model family's name.")
    return parameters


def halted_findings(rule, parameters: dict, now: datetime) -> list[Finding]:
    halted = Rollout.objects.filter(
        status=RolloutStatus.HALTED, finished_at__gte=now - timedelta(hours=parameters["window_hours"])
    ).select_related("version__family", "baseline__family")
    if parameters.get("family"):
        halted = halted.filter(family__name=parameters["family"])
    return [_finding(rollout) for rollout in halted.order_by("finished_at")]


def _finding(rollout: Rollout) -> Finding:
    baseline = rollout.baseline.label if rollout.baseline else None
    return Finding(
        f"rollout:{rollout.pk}",
        f"{rollout} of {rollout.version.label} was halted and rolled back to {baseline or 'nothing'}: {rollout.reason}",
        {
            "rollout": rollout.pk,
            "version": rollout.version.label,
            "baseline": baseline,
            "phase": rollout.phase,
            "halted_at": rollout.finished_at.isoformat(),
        },
    )
