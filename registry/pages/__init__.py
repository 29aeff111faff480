"""Operator pages for the registry outside the admin: families and versions (with the metrics a
candidate won or lost by), alias history, training jobs with live progress and their policies,
rollouts with per-phase status and gate evidence. Kept live over the ``registry`` topic
(static/sphere/registry.js); every change goes through the registry's services."""
