"""Each device's own telemetry baseline, and whether it departs from it now (devices.health)."""

from __future__ import annotations

from django.db import models


class TelemetryBaseline(models.Model):
    """Robust per-metric statistics (median and MAD) of a device's recent telemetry, refitted by
    a beat task, and the latest check of its live snapshot against them."""

    device = models.OneToOneField("devices.Device", on_delete=models.CASCADE, related_name="baseline")
    fitted_at = models.DateTimeField()
    samples = models.PositiveIntegerField(help_text="Heartbeats the baseline was fitted on.")
    statistics = models.JSONField(default=dict, help_text="{metric: {median, mad}}")
    checked_at = models.DateTimeField(null=True, blank=True)
    anomalous = models.BooleanField(default=False)
    anomalies = models.JSONField(default=dict, blank=True, help_text="{metric: {value, median, z}} beyond the limit")

    class Meta:
        indexes = [models.Index(fields=["anomalous"], name="devices_baseline_anomalous")]

    def __str__(self):
        return f"baseline of {self.device_id}"
