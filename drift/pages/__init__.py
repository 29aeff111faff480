"""Operator pages for drift outside the admin: the overview, events with their verdict forms,
incidents, reports and alerts, kept live over the ``drift`` topic (static/sphere/drift.js)."""
