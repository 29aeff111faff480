from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """Model versions, retraining and rollouts (issue: registry, retraining and rollout)."""

    name = "registry"

    def ready(self):
        # Registered from here: devices and drift sit below the registry and never import it.
        from django.db.models.signals import post_migrate

        from devices import hooks
        from registry import alerts, rollouts, schedules

        hooks.register_desired_state_provider(rollouts.desired_state)
        hooks.register_heartbeat_receiver(rollouts.on_heartbeat)
        alerts.register()
        post_migrate.connect(schedules.install_default_schedules, sender=self)
