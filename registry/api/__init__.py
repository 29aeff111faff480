"""Operator REST API of the registry, and the server-side prediction endpoint."""
