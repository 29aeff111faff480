"""Alert transports: one module per channel kind, each with ``KIND`` and
``send(channel, payload, delivery_id) -> None`` raising TransportError on failure.

``delivery_id`` is the same on every attempt at one notification (drift.alerts.delivery): each
transport hands it to the receiver so a repeat can be dropped."""

from drift.alerts.transports import email, webhook
from drift.alerts.transports.base import TransportError

TRANSPORTS = {module.KIND: module for module in (email, webhook)}

__all__ = ["TRANSPORTS", "TransportError", "send"]


def send(channel, payload: dict, delivery_id: str) -> None:
    transport = TRANSPORTS.get(channel.kind)
    if transport is None:
        raise TransportError(f"No transport for channel kind {channel.kind!r}.")
    transport.send(channel, payload, delivery_id)
