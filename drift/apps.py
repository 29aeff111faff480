from django.apps import AppConfig


class DriftConfig(AppConfig):
    """Drift events, validation, statistical reports and alerts (issue: drift management)."""

    name = "drift"

    def ready(self):
        # Registered from here, not by devices: devices sits below drift and never imports it.
        from django.db.models.signals import post_migrate

        from devices import hooks
        from devices.ingest import kinds
        from drift import schedules, verdicts
        from drift.package_kinds import drift_event, quarantine

        kinds.register(drift_event)
        kinds.register(quarantine)
        hooks.register_desired_state_provider(verdicts.desired_state)
        post_migrate.connect(schedules.install_default_schedules, sender=self)
