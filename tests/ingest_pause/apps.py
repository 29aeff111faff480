from django.apps import AppConfig


class IngestPauseConfig(AppConfig):
    name = "tests.ingest_pause"
    label = "ingest_pause"

    def ready(self):
        from devices.ingest import kinds
        from tests.ingest_pause import pausing_metrics

        # Listed after devices in INSTALLED_APPS, so this replaces the metrics handler it registered.
        kinds.register(pausing_metrics)
