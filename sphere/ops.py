"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST

from sphere import metrics

log = logging.getLogger(__name__)


@never_cache
def healthz(request):
    """Liveness: the process answers. Touches nothing else, so a slow database never kills it."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """Readiness: the database, the broker and the object storage all answer."""
    checks = {name: _timed(probe) for name, probe in READINESS_PROBES.items()}
    ready = all(result["ok"] for result in checks.values())
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)


@never_cache
def metrics_view(request):
    if settings.METRICS_TOKEN and not _bearer_matches(request, settings.METRICS_TOKEN):
        return HttpResponse("metrics need the bearer token set in METRICS_TOKEN\n", status=401)
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request, expected: str) -> bool:
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(presented.encode(), expected.encode())


def _timed(probe) -> dict:
    started = time.perf_counter()
    try:
        probe()
        result = {"ok": True}
    except Exception as exc:
        log.warning("readiness probe failed: %s", exc)
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker():
    from sphere.celery import app

    if settings.EMBEDDED_BROKER:
        # The filesystem transport "connects" without touching its folder; check the folder.
        _require_writable_dir(Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
        return
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _storage():
    """Every storage area answers: its local folder is writable, or its S3 bucket is reachable."""
    probed = set()
    for area in ("default", *settings.STORAGE_AREAS):
        storage = storages[area]
        target = _probe_target(storage)
        if target in probed:  # areas that are prefixes of one bucket need one probe
            continue
        probed.add(target)
        try:
            _probe(storage)
        except Exception as exc:
            raise StorageUnavailable(f"area {area}: {type(exc).__name__}: {exc}") from exc


class StorageUnavailable(Exception):
    pass


def _probe_target(storage) -> object:
    if isinstance(storage, FileSystemStorage):
        return Path(storage.location)
    return (storage.endpoint_url, storage.bucket_name)


def _probe(storage) -> None:
    if isinstance(storage, FileSystemStorage):
        # exists() on a local path answers False instead of failing; check the folder itself.
        _require_writable_dir(Path(storage.location), create=True)
        return
    # HEAD on the bucket rather than exists() on a key: a missing key and a missing bucket both
    # make exists() answer False, so only this notices a deleted or misspelt bucket.
    storage.connection.meta.client.head_bucket(Bucket=storage.bucket_name)


def _require_writable_dir(folder: Path, create: bool = False) -> None:
    if create:
        folder.mkdir(parents=True, exist_ok=True)  # FileExistsError when a file is in the way
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"{folder} is not a writable directory")


READINESS_PROBES = {"database": _database, "broker": _broker, "storage": _storage}
