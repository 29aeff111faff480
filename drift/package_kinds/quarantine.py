"""``quarantine``: quarantined samples shipped apart from their drift event (it went in an
earlier package, or there is none and ``event_id`` is null). Members ``samples/<id>.json`` and
``samples/<id>/<name>``, read and checked as in a ``drift_event`` package."""

from __future__ import annotations

from devices.models import PackageKind
from drift.package_kinds import drift_event

KIND = PackageKind.QUARANTINE
MEMBERS = drift_event.SAMPLE_MEMBERS


def handle(package, contents) -> dict:
    samples = drift_event.read_samples(contents)
    drift_event.check_records(contents.manifest, samples)
    return {"samples": drift_event.store_samples(package, samples)}
