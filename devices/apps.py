from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Fleet"

    def ready(self):
        from devices import schedules
        from devices.ingest import kinds
        from devices.ingest.kinds import metrics

        post_migrate.connect(schedules.install_default_schedules, sender=self)
        kinds.register(metrics)
