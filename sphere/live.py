"""Live events for operator pages, published over Channels after the transaction commits.

Every live event in Sphere goes through :func:`publish`, so the shape is uniform::

    {"type": "live.event", "event": "device.status", "data": {...}}

Consumers join groups named by topic (``fleet``, later ``drift``, ``labeling`` ...) after
checking the user's permission.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from asgiref.sync import async_to_sync
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
        async_to_sync(layer.group_send)(topic, message)
    except Exception:  # a dashboard that misses one update must never fail the write path
        log.exception("live event %s on %s could not be sent", event, topic)


def _json_safe(data: dict) -> dict:
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))
