from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Fleet"

    def ready(self):
        from devices import schedules
        from devices.ingest import kinds
        from devices.ingest.kinds import logs, metrics, prediction_images, state_snapshot

        post_migrate.connect(schedules.install_default_schedules, sender=self)
        for handler in (metrics, prediction_images, logs, state_snapshot):
            kinds.register(handler)
