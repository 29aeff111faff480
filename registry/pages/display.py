"""Turning stored registry data into what a page shows: a candidate's metrics against its
champion, a bundle's manifest, a policy's state, a rollout's phases and the gate numbers behind
a decision. No queries here."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from registry.models import AssignmentState, Rollout
from registry.pages.charts import state_bar_svg
from registry.rollouts import DRIFT_EVENTS_FLOOR

OVERALL_METRICS = (
    ("Held-out set", "holdout_accuracy", "holdout_samples"),
    ("Drift set", "drift_accuracy", "drift_samples"),
    ("Snapshot items", "snapshot_accuracy", None),
    ("Shipped test set", "shipped_test_accuracy", None),
)
ASSIGNMENT_STATES = [(state, label) for state, label in AssignmentState.choices]


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def accuracy(value) -> str:
    return f"{value:.3f}" if _is_number(value) else "—"


def share(value) -> str:
    return f"{value:.0%}" if _is_number(value) else "—"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- Metrics ----------------------------------------------------------------------------------


def headline_metrics(metrics) -> dict:
    """The candidate's held-out and drift-set accuracy, for version lists."""
    candidate = (metrics or {}).get("candidate") or {}
    return {
        "holdout": accuracy(candidate.get("holdout_accuracy")),
        "drift": accuracy(candidate.get("drift_accuracy")),
    }


def metric_rows(metrics) -> list[dict]:
    """Candidate against champion on the same held-out data (registry.training.evaluate), overall
    and per class, with the difference. Empty when the version was not evaluated (shipped, upload)."""
    candidate = (metrics or {}).get("candidate") or {}
    champion = (metrics or {}).get("champion") or {}
    if not candidate:
        return []
    rows = [
        _metric_row(name, candidate.get(key), champion.get(key), candidate.get(samples) if samples else None)
        for name, key, samples in OVERALL_METRICS
    ]
    theirs = champion.get("per_class") or {}
    for name, value in (candidate.get("per_class") or {}).items():
        rows.append(_metric_row(f"class {name}", value, theirs.get(name), None, per_class=True))
    return rows


def _metric_row(name: str, candidate, champion, samples, *, per_class: bool = False) -> dict:
    both = _is_number(candidate) and _is_number(champion)
    difference = candidate - champion if both else None
    return {
        "name": name,
        "per_class": per_class,
        "candidate": candidate if _is_number(candidate) else None,
        "champion": champion if _is_number(champion) else None,
        "candidate_text": accuracy(candidate),
        "champion_text": accuracy(champion),
        "difference": difference,
        "difference_text": f"{difference:+.3f}" if difference is not None else "—",
        # Accuracies are multiples of 1/n: a float error is no change.
        "tone": "same" if difference is None or abs(difference) < 1e-9 else ("better" if difference > 0 else "worse"),
        "samples": samples,
    }


# --- Bundle and parameters --------------------------------------------------------------------


def manifest_summary(manifest) -> dict:
    """The manifest's scalar facts (format, label, feature size, what trained it) and its files."""
    manifest = manifest if isinstance(manifest, dict) else {}
    facts = [(key, value) for key, value in sorted(manifest.items()) if key not in ("files", "classes")]
    files = [item for item in manifest.get("files") or [] if isinstance(item, dict)]
    return {
        "facts": [(key, _plain(value)) for key, value in facts],
        "classes": manifest.get("classes") or [],
        "files": files,
    }


def param_rows(params) -> list[tuple[str, str]]:
    return [(str(key), _plain(value)) for key, value in sorted((params or {}).items())]


def _plain(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return "—" if value in (None, "") else str(value)


# --- Policies ---------------------------------------------------------------------------------


def policy_state(policy, now: datetime) -> dict:
    """What holds a policy back, from the row and its newest job (queries.policies): the same
    conditions registry.policies checks, which has the last word when a job is asked for."""
    breaker_open = bool(policy.breaker_open_until and policy.breaker_open_until > now)
    cooldown_until = (
        policy.last_job_at + timedelta(minutes=policy.cooldown_minutes) if policy.last_job_at is not None else None
    )
    active = policy.newest_job_status in ("queued", "running")
    if not policy.enabled:
        state, tone = "disabled", "off"
    elif breaker_open:
        state, tone = "breaker open", "bad"
    elif active:
        state, tone = f"job {policy.newest_job_id} {policy.newest_job_status}", "busy"
    elif cooldown_until is not None and cooldown_until > now:
        state, tone = "cooling down", "wait"
    else:
        state, tone = "ready", "good"
    return {
        "state": state,
        "tone": tone,
        "breaker_open": breaker_open,
        "cooldown_until": cooldown_until if cooldown_until is not None and cooldown_until > now else None,
        "active": active,
    }


# --- Rollouts ---------------------------------------------------------------------------------


def phase_rows(rollout: Rollout, summary: dict) -> list[dict]:
    """One row per phase (rollout_summary's counts) with its stacked state bar."""
    rows = []
    for index, phase in enumerate(summary["phases"]):
        counts = phase["counts"]
        rows.append(
            {
                "index": index,
                "share": phase["share"],
                "counts": state_cells(counts),
                "devices": sum(counts.values()),
                "bar": state_bar_svg(counts),
                "current": index == rollout.phase,
                "reached": index <= rollout.phase,
            }
        )
    return rows


def state_cells(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(state, label, devices) of the states that have devices, in the state machine's order."""
    return [(state, label, counts[state]) for state, label in ASSIGNMENT_STATES if counts.get(state)]


def gate_evidence(evidence) -> dict | None:
    """The gate numbers of a decision: at the top of its evidence, or under "gates" for an
    advance (whose evidence also holds the assignments it made). None: it judged no gate."""
    if not isinstance(evidence, dict):
        return None
    nested = evidence.get("gates")
    if isinstance(nested, dict) and "install" in nested:
        return nested
    return evidence if "install" in evidence else None


def gate_rows(evidence: dict, gates: dict) -> list[dict]:
    """Each gate as compared by registry.rollouts.evaluate_gates: the canary's number, the
    control's, the threshold (as set on the rollout when the decision was made) and the outcome."""
    limits = {"drift_events_floor": DRIFT_EVENTS_FLOOR, **gates, **(evidence.get("thresholds") or {})}
    install = evidence.get("install") or {}
    rows = [_observed_row(evidence, limits), *_install_rows(install, limits)]
    health = evidence.get("health")
    if isinstance(health, dict):
        rows += _health_rows(health.get("canary") or {}, health.get("control") or {}, limits, evidence)
    return rows


def _row(name: str, canary: str, control: str, threshold: str, outcome: str) -> dict:
    return {"name": name, "canary": canary, "control": control, "threshold": threshold, "outcome": outcome}


def _judged(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "fail")


def _observed_row(evidence: dict, limits: dict) -> dict:
    observed, minimum = evidence.get("observed_minutes"), limits.get("min_observation_minutes")
    ok = observed >= minimum if _is_number(observed) and _is_number(minimum) else None
    return _row("Phase observed", _minutes(observed), "", f"≥ {_minutes(minimum)}", _judged(ok))


def _install_rows(install: dict, limits: dict) -> list[dict]:
    success, failed, reporting = install.get("install_success"), install.get("failed"), install.get("reporting_share")
    minimum_success, most_failed = limits.get("min_install_success"), limits.get("max_failed")
    minimum_reporting = limits.get("min_reporting_share")
    resolved = f"{install.get('active', 0)} active, {install.get('failed', 0)} failed"
    reported = f"{install.get('phase_reported', 0)} of {install.get('phase_delivered', 0)} delivered"
    return [
        _row(
            "Install success",
            f"{share(success)} ({resolved})",
            "",
            f"≥ {share(minimum_success)}",
            "hold" if success is None else _judged(_at_least(success, minimum_success)),
        ),
        _row("Failed installs", _text(failed), "", f"≤ {_text(most_failed)}", _judged(_at_most(failed, most_failed))),
        _row(
            "Phase reporting",
            f"{share(reporting)} ({reported})",
            "",
            f"≥ {share(minimum_reporting)}",
            "pass" if _at_least(reporting, minimum_reporting) else "hold",
        ),
    ]


def _health_rows(canary: dict, control: dict, limits: dict, evidence: dict) -> list[dict]:
    # "failed" is written only once the health gates were judged (enough predictions on both sides).
    judged = "failed" in evidence
    failed = set(evidence.get("failed") or [])
    least = limits.get("min_predictions")
    enough = _at_least(min(canary.get("predictions", 0), control.get("predictions", 0)), least)
    rows = [
        _row(
            "Predictions",
            _text(canary.get("predictions")),
            _text(control.get("predictions")),
            f"≥ {_text(least)} each",
            "pass" if enough else "hold",
        )
    ]

    def outcome(name: str) -> str:
        return ("fail" if name in failed else "pass") if judged else "—"

    confidence, drop = control.get("mean_confidence"), limits.get("max_confidence_drop")
    lowest = confidence - drop if _is_number(confidence) and _is_number(drop) else None
    rows.append(
        _row(
            "Mean confidence",
            accuracy(canary.get("mean_confidence")),
            accuracy(confidence),
            f"≥ {accuracy(lowest)} (control − {_text(drop)})",
            outcome("confidence"),
        )
    )
    rows.append(_drift_row(canary, control, limits, outcome("drift_rate")))
    latency, ratio = control.get("mean_latency_ms"), limits.get("max_latency_ratio")
    highest = latency * ratio if _is_number(latency) and _is_number(ratio) else None
    rows.append(
        _row(
            "Mean latency",
            _ms(canary.get("mean_latency_ms")),
            _ms(latency),
            f"≤ {_ms(highest)} (control × {_text(ratio)})",
            outcome("latency"),
        )
    )
    return rows


def _drift_row(canary: dict, control: dict, limits: dict, outcome: str) -> dict:
    # The canary may have the control's rate over its own exposure, times the ratio, plus a floor.
    ratio, floor = limits.get("max_drift_rate_ratio"), limits.get("drift_events_floor")
    rate, hours = control.get("drift_rate"), canary.get("device_hours")
    numbers = (rate, hours, ratio, floor)
    allowed = rate * hours * ratio + floor if all(_is_number(n) for n in numbers) else None
    return _row(
        "Drift events",
        f"{_text(canary.get('drift_events'))} ({_rate(canary.get('drift_rate'))} over {_hours(hours)})",
        f"{_text(control.get('drift_events'))} ({_rate(rate)})",
        f"≤ {_events(allowed)} (control rate × {_text(ratio)} + {_text(floor)})",
        outcome,
    )


def _at_least(value, limit) -> bool:
    return _is_number(value) and _is_number(limit) and value >= limit


def _at_most(value, limit) -> bool | None:
    return value <= limit if _is_number(value) and _is_number(limit) else None


def _text(value) -> str:
    if not _is_number(value):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _minutes(value) -> str:
    return f"{value:.1f} min" if _is_number(value) else "—"


def _hours(value) -> str:
    return f"{value:.2f} device-h" if _is_number(value) else "—"


def _ms(value) -> str:
    return f"{value:.1f} ms" if _is_number(value) else "—"


def _rate(value) -> str:
    return f"{value:.3g}/device-h" if _is_number(value) else "—"


def _events(value) -> str:
    return f"{value:.3g} events" if _is_number(value) else "—"
