"""Handlers for the package kinds the drift app owns (see devices.ingest.kinds)."""
