"""Live events for operator pages, published over Channels after the transaction commits.

Every live event in Sphere goes through :func:`publish`, so the shape is uniform::

    {"type": "live.event", "event": "device.status", "data": {...}}

Consumers join groups named by topic (``fleet``, later ``drift``, ``labeling`` ...) after
checking the user's permission.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable

from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

log = logging.getLogger(__name__)


def publish(topic: str, event: str, data: dict | Callable[[], dict]) -> None:
    """Send ``event`` to the ``topic`` group once the current transaction commits.

    ``data`` may be a callable, evaluated after commit, for payloads that must see the commit.
    """
    transaction.on_commit(lambda: _send(topic, event, data))


def _send(topic: str, event: str, data) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        payload = data() if callable(data) else data
        message = {"type": "live.event", "event": event, "data": _json_safe(payload)}
        future = asyncio.run_coroutine_threadsafe(layer.group_send(topic, message), _publisher_loop())
        future.result(timeout=SEND_TIMEOUT_S)
    except Exception:  # a dashboard that misses one update must never fail the write path
        log.exception("live event %s on %s could not be sent", event, topic)


SEND_TIMEOUT_S = 2.0
_publisher: tuple[int, asyncio.AbstractEventLoop] | None = None
_publisher_lock = threading.Lock()


def _publisher_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, on a thread of its own, for every publish. async_to_sync
    would make a loop per call, and channels-redis a Redis connection per loop: a few
    milliseconds on every event a worker sends. (Per process: a forked worker child gets its own.)"""
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="live-publisher", daemon=True).start()
            _publisher = (os.getpid(), loop)
        return _publisher[1]


def _json_safe(data: dict) -> dict:
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))
