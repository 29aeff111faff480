"""The device fleet: devices, their groups and tags, credentials, enrollment and telemetry."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class DeviceGroup(models.Model):
    """A static group: devices are placed in it explicitly. It sets their heartbeat schedule and
    the configuration they receive in their desired state."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    heartbeat_period_s = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Expected seconds between heartbeats."
    )
    grace_s = models.PositiveIntegerField(
        default=120, help_text="Seconds after a missed heartbeat before the device is offline."
    )
    config = models.JSONField(default=dict, blank=True, help_text="Sent to devices in their desired state.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class DeviceTag(models.Model):
    name = models.SlugField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class DeviceStatus(models.TextChoices):
    NEW = "new", "New"
    ONLINE = "online", "Online"
    LATE = "late", "Late"
    OFFLINE = "offline", "Offline"


class Device(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="devices")
    tags = models.ManyToManyField(DeviceTag, blank=True, related_name="devices")
    hardware = models.CharField(max_length=100, blank=True, help_text="e.g. Raspberry Pi Zero 2 W")
    platform = models.CharField(max_length=100, blank=True, help_text="e.g. linux-aarch64 / Python 3.11")
    location = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    client_version = models.CharField(max_length=40, blank=True)
    model_version = models.CharField(max_length=80, blank=True)
    last_telemetry = models.JSONField(default=dict, blank=True, editable=False)
    runtime = models.JSONField(
        default=dict, blank=True, editable=False, help_text="Memory and runtime versions, as last reported."
    )
    bundle_outcome = models.JSONField(
        default=dict, blank=True, editable=False, help_text="Outcome of the last model bundle applied, as reported."
    )

    status = models.CharField(max_length=10, choices=DeviceStatus.choices, default=DeviceStatus.NEW)
    last_seen_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Due times kept as columns so the status sweep is an index range scan, not a table scan.
    late_at = models.DateTimeField(null=True, blank=True, editable=False)
    offline_at = models.DateTimeField(null=True, blank=True, editable=False)

    enrollment = models.ForeignKey(
        "EnrollmentToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )
    enrollment_request_id = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # The sweep's two queries (online devices past late_at; online or late devices past
            # offline_at) are range scans on these, whatever the fleet size; the status prefix
            # also serves fleet counts and the status filter.
            models.Index(fields=["status", "late_at"], name="devices_due_late"),
            models.Index(fields=["status", "offline_at"], name="devices_due_offline"),
        ]

    def __str__(self):
        return self.name

    @property
    def heartbeat_period_s(self) -> int:
        return self.group.heartbeat_period_s if self.group_id else settings.DEVICE_HEARTBEAT_PERIOD_S

    @property
    def grace_s(self) -> int:
        return self.group.grace_s if self.group_id else settings.DEVICE_HEARTBEAT_GRACE_S

    def due_times(self, seen_at):
        late = seen_at + timedelta(seconds=self.heartbeat_period_s)
        return late, late + timedelta(seconds=self.grace_s)


class DeviceCredential(models.Model):
    """A device's secret token. Only a SHA-256 of the secret is stored; the token is shown once.

    Tokens are 256-bit random strings, so a fast hash is as safe as a slow one here and keeps
    per-request authentication cheap. The prefix finds the row without revealing the secret.
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({'revoked' if self.revoked_at else 'active'})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class EnrollmentToken(models.Model):
    """A shared secret an operator hands to devices so they can register themselves."""

    name = models.CharField(max_length=100)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    max_uses = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    use_count = models.PositiveIntegerField(default=0, editable=False)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(use_count__lte=models.F("max_uses")),
                name="%(app_label)s_%(class)s_uses_within_max",
            )
        ]

    def __str__(self):
        return self.name

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and self.use_count < self.max_uses and self.expires_at > timezone.now()


class Telemetry(models.Model):
    """One heartbeat's operational metrics. Grows without bound: pruned by a retention task."""

    id = models.BigAutoField(primary_key=True)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+", db_index=False)
    client_id = models.UUIDField(help_text="Idempotency key generated by the device.")
    received_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_percent = models.FloatField(null=True, blank=True)
    memory_used_mb = models.FloatField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    disk_percent = models.FloatField(null=True, blank=True)
    net_rx_bytes = models.BigIntegerField(null=True, blank=True)
    net_tx_bytes = models.BigIntegerField(null=True, blank=True)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    throughput_ips = models.FloatField(null=True, blank=True, help_text="Inferences per second.")
    error_rate = models.FloatField(
        null=True, blank=True, help_text="Share of inferences that failed since the previous heartbeat (0–1)."
    )
    uptime_s = models.FloatField(null=True, blank=True)
    client_version = models.CharField(max_length=40, blank=True)
    model_version = models.CharField(max_length=80, blank=True)

    class Meta:
        verbose_name_plural = "telemetry"
        constraints = [
            models.UniqueConstraint(fields=["device", "client_id"], name="%(app_label)s_%(class)s_unique_client_id")
        ]
        indexes = [
            # A device's time series (device page, API ?device=&since=).
            models.Index(fields=["device", "-received_at"], name="devices_telemetry_device_time"),
            # Fleet-wide time window queries and the retention job's range delete.
            models.Index(fields=["received_at"], name="devices_telemetry_time"),
        ]

    def __str__(self):
        return f"{self.device_id} @ {self.received_at:%Y-%m-%d %H:%M:%S}"


METRIC_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "memory_used_mb",
    "temperature_c",
    "disk_percent",
    "net_rx_bytes",
    "net_tx_bytes",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_ips",
    "error_rate",
    "uptime_s",
)
