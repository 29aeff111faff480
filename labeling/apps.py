from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Labeling queue, labels, reviews and dataset snapshots (see labeling/README.md)."""

    name = "labeling"

    def ready(self):
        # Registered from here: devices and drift sit below labeling and never import it.
        from django.db.models.signals import post_delete, post_migrate

        from devices import hooks as device_hooks
        from drift import hooks as drift_hooks
        from labeling import alerts, export, schedules, sources
        from labeling.models import DatasetSnapshot

        device_hooks.register_uncertain_prediction_receiver(sources.on_uncertain_predictions)
        drift_hooks.register_confirmed_samples_receiver(sources.on_confirmed_samples)
        alerts.register()
        post_migrate.connect(schedules.install_default_schedules, sender=self)
        # A signal, not a delete() override: the admin deletes querysets, which skip delete().
        post_delete.connect(export.delete_archive_on_commit, sender=DatasetSnapshot)
