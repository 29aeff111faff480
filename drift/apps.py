from django.apps import AppConfig


class DriftConfig(AppConfig):
    """Drift events, validation, statistical reports and alerts (issue: drift management)."""

    name = "drift"
