"""The ``metrics`` kind, except that the first package it handles (in any process sharing the
marker path) stops after storing its rows: still inside the transaction that would mark the
package processed, it writes what it sees to the file named by INGEST_PAUSE_MARKER and sleeps
INGEST_PAUSE_S seconds, long enough for the test to SIGKILL the worker there."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from django.db import transaction

from devices.ingest.kinds import metrics
from devices.models import Telemetry

KIND = metrics.KIND
MEMBERS = metrics.MEMBERS


def handle(package, contents) -> dict:
    summary = metrics.handle(package, contents)
    marker = Path(os.environ["INGEST_PAUSE_MARKER"])
    if not marker.exists():
        _write(marker, _what_we_see(package, summary))
        time.sleep(float(os.environ.get("INGEST_PAUSE_S", "120")))
    return summary


def _what_we_see(package, summary: dict) -> dict:
    return {
        "package": package.pk,
        "summary": summary,
        "in_transaction": transaction.get_connection().in_atomic_block,
        # Rows this transaction wrote: no other connection can see them until it commits.
        "telemetry_rows_seen_inside": Telemetry.objects.filter(device=package.device_id).count(),
        "pid": os.getpid(),
    }


def _write(marker: Path, document: dict) -> None:
    # Written aside then renamed, so the test never reads half a file.
    partial = marker.with_suffix(".partial")
    partial.write_text(json.dumps(document))
    partial.rename(marker)
