"""One handler module per package kind, all of the same shape::

    KIND = "metrics"                       # a devices.models.PackageKind value
    MEMBERS = (re.compile(r"^metrics\\.jsonl$"),)   # the member paths this kind may hold
    def handle(package, contents) -> dict  # store what the package holds; return a summary

``handle`` runs inside the transaction that marks the package processed, so its rows appear
together or not at all. It must be idempotent per record: a record may arrive again in another
package, so rows are unique on (device, record id) and files are written under names derived
from those ids. It raises ``ArchiveError`` for content that can never be processed.

Apps register their kinds in ``AppConfig.ready`` (devices: metrics, prediction_images, logs,
state_snapshot; drift: drift_event, quarantine), keeping the app dependency ladder intact.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from django.core.files.base import ContentFile
from django.core.files.storage import storages

from devices.ingest.archive import ArchiveError

_handlers: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
    for attribute in ("KIND", "MEMBERS", "handle"):
        if not hasattr(module, attribute):
            raise TypeError(f"package handler {module.__name__} has no {attribute}")
    _handlers[module.KIND] = module
    return module


def handler_for(kind: str) -> ModuleType:
    try:
        return _handlers[kind]
    except KeyError:
        raise ArchiveError(f"No handler is installed for packages of kind {kind!r}.") from None


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(_handlers))


def store_file(area: str, name: str, data: bytes) -> str:
    """Write ``data`` under ``name`` in a storage area, replacing what is there: names derive from
    record ids, so an existing file is a replay's (or a rolled-back attempt's) same bytes.
    (FileSystemStorage areas are configured with allow_overwrite; S3 areas with file_overwrite.)"""
    return storages[area].save(name, ContentFile(data))


def store_files(area: str, files: dict[str, bytes]) -> None:
    """Write several files at once: on S3 each is a round trip, on a local disk a metadata write,
    so a package of 20 samples would otherwise spend most of its time waiting in turn."""
    if len(files) <= 1:
        for name, data in files.items():
            _store_checked(area, name, data)
        return
    for _ in _writers().map(lambda item: _store_checked(area, *item), files.items()):
        pass  # re-raises the first failure


def _store_checked(area: str, name: str, data: bytes) -> None:
    stored = store_file(area, name, data)
    if stored != name:  # rows record the name they asked for
        raise RuntimeError(f"storage {area!r} saved {name!r} as {stored!r}: it must overwrite, not rename")


_writer_pool: tuple[int, ThreadPoolExecutor] | None = None


def _writers() -> ThreadPoolExecutor:
    # One pool per process: a forked Celery child must not inherit its parent's threads.
    global _writer_pool
    if _writer_pool is None or _writer_pool[0] != os.getpid():
        _writer_pool = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-files"))
    return _writer_pool[1]


def check_members(handler: ModuleType, paths) -> None:
    for path in paths:
        if not any(pattern.fullmatch(path) for pattern in handler.MEMBERS):
            raise ArchiveError(f"Member {path!r} does not belong in a {handler.KIND} package.")
