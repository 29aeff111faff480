"""Crash-safe file writes shared by the bundle manager, state snapshots, quarantine and sync.

A file is written whole to a temporary name beside it, fsynced, renamed over the target with
``os.replace`` and the folder fsynced, so a power cut leaves either the old file or the new one.
Temporary names start with ``.tmp-`` so owners can sweep leftovers of an interrupted write.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{path.name}")
    # Created with its final mode, so a secret is never readable by others, not even briefly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, data, **options) -> None:
    atomic_write(path, json.dumps(data, allow_nan=False).encode(), **options)


def fsync_dir(path: Path) -> None:
    # A rename is durable only once the folder holding it is synced.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
