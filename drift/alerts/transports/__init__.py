"""Alert transports: one module per channel kind, each with ``KIND`` and
``send(channel, alert, payload) -> None`` raising TransportError on failure."""

from drift.alerts.transports import email, webhook
from drift.alerts.transports.base import TransportError

TRANSPORTS = {module.KIND: module for module in (email, webhook)}

__all__ = ["TRANSPORTS", "TransportError", "send"]


def send(channel, alert, payload: dict) -> None:
    transport = TRANSPORTS.get(channel.kind)
    if transport is None:
        raise TransportError(f"No transport for channel kind {channel.kind!r}.")
    transport.send(channel, alert, payload)
