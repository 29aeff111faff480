"""Drift events devices report, and the quarantined samples that come with them.

Rows arrive through packages (``drift.packages``): each is unique on (device, client id), since
a record can arrive in two packages. The drift-management issue adds validation and verdicts.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from drift.alerts import registry as alert_registry


class DriftStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CONFIRMED = "confirmed", "Confirmed"
    REJECTED = "rejected", "Rejected"
    RESOLVED = "resolved", "Resolved"


# Verdicts a device acts on (the edge client releases a rejected event's quarantined samples).
DEVICE_VERDICTS = (DriftStatus.CONFIRMED, DriftStatus.REJECTED)


class IncidentKind(models.TextChoices):
    DEVICE_LOCAL = "device_local", "Device-local"
    COHORT = "cohort", "Cohort"
    POPULATION = "population", "Population"
    SCATTERED = "scattered", "Scattered"


class Incident(models.Model):
    """Drift events close in time, grouped and classified by how far across the fleet they
    reach (``drift.triage``). Re-triaged as events arrive; its evidence is what the operator
    sees and what the retraining policy reads."""

    kind = models.CharField(max_length=12, choices=IncidentKind.choices)
    slice_attribute = models.CharField(max_length=20, blank=True, help_text="group, location, hardware, model_version")
    slice_value = models.CharField(max_length=100, blank=True)
    evidence = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    device_count = models.PositiveIntegerField()
    event_count = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["-started_at"], name="drift_incident_time")]

    def __str__(self):
        scope = f" {self.slice_attribute}={self.slice_value}" if self.slice_attribute else ""
        return f"{self.get_kind_display()}{scope} @ {self.started_at:%Y-%m-%d %H:%M}"


class DriftEvent(models.Model):
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="drift_events", db_index=False)
    client_id = models.UUIDField(help_text="The event's id on the device.")
    created = models.DateTimeField(help_text="When the device detected it (its clock).")
    received_at = models.DateTimeField(default=timezone.now)
    detector = models.CharField(max_length=64, blank=True, help_text="Name of the monitor that fired.")
    model_version = models.CharField(max_length=80, blank=True)
    payload = models.JSONField(default=dict, blank=True, help_text="The event as the device sent it.")
    package = models.ForeignKey("devices.Package", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    incident = models.ForeignKey(Incident, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    status = models.CharField(max_length=10, choices=DriftStatus.choices, default=DriftStatus.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True, help_text="Why the operator decided so.")
    # The verdict the device acknowledged. A confirmed/rejected status different from this one
    # is still owed to the device: it is listed in every desired state until acknowledged.
    acknowledged_status = models.CharField(max_length=10, blank=True, editable=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["device", "client_id"], name="%(app_label)s_%(class)s_unique_client_id")
        ]
        indexes = [
            models.Index(fields=["device", "-created"], name="drift_event_device_time"),
            # The triage queue: pending events, oldest first.
            models.Index(fields=["status", "created"], name="drift_event_status_time"),
            # Verdicts owed to a device (read on every heartbeat): decided, not yet acknowledged.
            models.Index(
                fields=["device"],
                condition=models.Q(status__in=["confirmed", "rejected"])
                & ~models.Q(acknowledged_status=models.F("status")),
                name="drift_event_owed_verdicts",
            ),
        ]

    def __str__(self):
        return f"{self.detector or 'drift'} on {self.device_id} @ {self.created:%Y-%m-%d %H:%M:%S}"

    @property
    def verdict_owed(self) -> bool:
        return self.status in DEVICE_VERDICTS and self.acknowledged_status != self.status


class Verdict(models.Model):
    """One decision on a drift event, kept forever (append-only): the event holds the latest,
    this table every step (pending → confirmed → resolved) with who, when and why."""

    event = models.ForeignKey(DriftEvent, on_delete=models.CASCADE, related_name="verdicts")
    previous_status = models.CharField(max_length=10, choices=DriftStatus.choices)
    status = models.CharField(max_length=10, choices=DriftStatus.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField()
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["event", "decided_at", "pk"]
        indexes = [models.Index(fields=["event", "decided_at"], name="drift_verdict_event_time")]

    def __str__(self):
        return f"{self.previous_status} → {self.status} on event {self.event_id}"


class DriftSample(models.Model):
    """A sample a device's monitors flagged (its quarantine). ``event_client_id`` is kept even
    when the event has not arrived yet, so the link is made whichever comes first."""

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+", db_index=False)
    client_id = models.UUIDField()
    event = models.ForeignKey(DriftEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="samples")
    event_client_id = models.UUIDField(null=True, blank=True)
    created = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    model_version = models.CharField(max_length=80, blank=True)
    label = models.CharField(max_length=100, blank=True, help_text="The device's prediction.")
    confidence = models.FloatField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    features = models.BinaryField(null=True, blank=True, help_text="float32 little-endian feature vector.")
    image_key = models.CharField(max_length=300, blank=True, help_text="Name in the drift-images storage.")
    attachments = models.JSONField(default=list, blank=True, help_text="[{name, key, size, sha256}]")
    package = models.ForeignKey("devices.Package", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["device", "client_id"], name="%(app_label)s_%(class)s_unique_client_id")
        ]
        indexes = [
            models.Index(fields=["device", "-created"], name="drift_sample_device_time"),
            # Linking samples that arrived before their event.
            models.Index(fields=["device", "event_client_id"], name="drift_sample_event_link"),
        ]

    def __str__(self):
        return f"sample {self.client_id}"


class ReportScope(models.TextChoices):
    FLEET = "fleet", "Whole fleet"
    GROUP = "group", "Device group"
    DEVICE = "device", "Device"
    MODEL_VERSION = "model_version", "Model version"


class ReportPolicy(models.Model):
    """What to compare, how, and how often: a beat task creates a report when one is due."""

    name = models.CharField(max_length=100, unique=True)
    scope = models.CharField(max_length=16, choices=ReportScope.choices, default=ReportScope.FLEET)
    scope_value = models.CharField(max_length=100, blank=True, help_text="Group name, device id or model version.")
    reference_start = models.DateTimeField(help_text="The reference window (e.g. the first days after deployment).")
    reference_end = models.DateTimeField()
    current_hours = models.PositiveIntegerField(default=24, help_text="The current window: the last N hours.")
    interval_minutes = models.PositiveIntegerField(default=60)
    drift_share = models.FloatField(default=0.5, help_text="Dataset drift when this share of features drifted.")
    fdr = models.FloatField(null=True, blank=True, help_text="Benjamini-Hochberg level for p-value tests (empty: off).")
    overrides = models.JSONField(
        default=dict, blank=True, help_text='Per feature: {"confidence": {"test": "psi", "threshold": 0.2}}'
    )
    enabled = models.BooleanField(default=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "report policies"

    def __str__(self):
        return self.name


class ReportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class DriftReport(models.Model):
    """Reference vs current window over a scope's prediction logs, per feature (drift.reports)."""

    policy = models.ForeignKey(ReportPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports")
    scope = models.CharField(max_length=16, choices=ReportScope.choices)
    scope_value = models.CharField(max_length=100, blank=True)
    reference_start = models.DateTimeField()
    reference_end = models.DateTimeField()
    current_start = models.DateTimeField()
    current_end = models.DateTimeField()
    drift_share = models.FloatField(default=0.5)
    fdr = models.FloatField(null=True, blank=True)
    overrides = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=ReportStatus.choices, default=ReportStatus.PENDING)
    error = models.TextField(blank=True)
    reference_rows = models.PositiveIntegerField(default=0)
    current_rows = models.PositiveIntegerField(default=0)
    dataset_drift = models.BooleanField(null=True)
    share_of_drifted_features = models.FloatField(null=True)
    results = models.JSONField(default=dict, blank=True, help_text="Per feature: test, score, p-value, histograms.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        scope = f"{self.get_scope_display()} {self.scope_value}".strip()
        return f"{scope} @ {self.current_end:%Y-%m-%d %H:%M}"


# --- Alerts (drift.alerts) ---------------------------------------------------------------------


class ChannelKind(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Signed webhook"


class Channel(models.Model):
    """Where alert notifications go, through the transport of its kind (drift.alerts.transports)."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    target = models.TextField(help_text="E-mail: addresses separated by commas. Webhook: the https:// URL.")
    # Webhook bodies are signed with it (X-Sphere-Signature, see docs/configuration.md); never shown back.
    secret = models.CharField(max_length=200, blank=True, help_text="Webhook signing secret (write-only).")
    enabled = models.BooleanField(default=True)

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def addresses(self) -> list[str]:
        return [address.strip() for address in self.target.split(",") if address.strip()]

    def clean(self):
        from django.core.exceptions import ValidationError
        from django.core.validators import URLValidator, validate_email

        if self.kind == ChannelKind.EMAIL:
            if not self.addresses:
                raise ValidationError({"target": "Give at least one e-mail address."})
            for address in self.addresses:
                validate_email(address)
        elif self.kind == ChannelKind.WEBHOOK:
            URLValidator(schemes=["http", "https"])(self.target.strip())
            if not self.secret:
                raise ValidationError({"secret": "A webhook needs a signing secret."})


class AlertKind(models.TextChoices):
    """drift's built-in rule kinds. Other apps register theirs (drift.alerts.registry), so
    AlertRule.kind's choices are read from the registry, not from here."""

    DRIFT_EVENT = "drift_event", "Drift events"
    INCIDENT = "incident", "Drift incident"
    REPORT_DRIFT = "report_drift", "Drift report share"
    TELEMETRY_THRESHOLD = "telemetry_threshold", "Telemetry threshold"
    TELEMETRY_ANOMALY = "telemetry_anomaly", "Telemetry off its baseline"
    DEVICE_OFFLINE = "device_offline", "Device offline"


class AlertRule(models.Model):
    """A condition evaluated every minute (drift.alerts.evaluate) over a scope, and how loudly
    it may speak: an action interval between notifications and a flapping guard."""

    name = models.CharField(max_length=100, unique=True)
    # A callable: kinds other apps register are valid too. The column stays a plain string.
    kind = models.CharField(
        max_length=alert_registry.NAME_MAX_LENGTH,
        choices=alert_registry.choices,
        error_messages={"invalid_choice": "%(value)r is not a registered alert kind."},
    )
    parameters = models.JSONField(
        default=dict,
        blank=True,
        help_text='Per kind (drift.alerts.evaluate), e.g. {"metric": "latency_p95_ms", "op": ">", "threshold": 500}',
    )
    scope = models.CharField(max_length=16, choices=ReportScope.choices, default=ReportScope.FLEET)
    scope_value = models.CharField(max_length=100, blank=True, help_text="Group name, device id or model version.")
    action_interval_minutes = models.PositiveIntegerField(
        default=60, help_text="Least time between two notifications of the same alert."
    )
    clear_after_minutes = models.PositiveIntegerField(
        default=5, help_text="An alert resolves only once its condition stayed false this long."
    )
    max_transitions_per_hour = models.PositiveIntegerField(
        default=6, help_text="Beyond this many condition changes in an hour the alert is flapping and stays quiet."
    )
    enabled = models.BooleanField(default=True)
    channels = models.ManyToManyField(Channel, blank=True, related_name="rules")

    def __str__(self):
        return self.name

    def clean(self):
        from django.core.exceptions import ValidationError

        from drift.alerts import evaluate

        errors = {}
        # An unknown kind is refused by the field's choice check; its parameters cannot be judged.
        if alert_registry.is_registered(self.kind):
            try:
                self.parameters = evaluate.validate(self.kind, self.parameters or {})
            except ValueError as exc:
                errors["parameters"] = str(exc)
        if self.scope != ReportScope.FLEET and not self.scope_value:
            errors["scope_value"] = "This scope needs a value."
        if errors:
            raise ValidationError(errors)


class AlertStatus(models.TextChoices):
    FIRING = "firing", "Firing"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    """One rule's alert about one subject ("device:<id>", "incident:<id>", "group:<name>" ...),
    reopened when its condition holds again. State changes happen in drift.alerts.services."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    subject = models.CharField(max_length=200)
    status = models.CharField(max_length=12, choices=AlertStatus.choices, default=AlertStatus.FIRING)
    message = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    first_fired_at = models.DateTimeField()
    last_fired_at = models.DateTimeField(help_text="When it last went to firing.")
    last_true_at = models.DateTimeField(help_text="When its condition last held.")
    last_notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    # The flapping guard: changes of the condition counted in a window of an hour.
    condition = models.BooleanField(default=True)
    changed_at = models.DateTimeField(help_text="When the condition last changed.")
    window_started_at = models.DateTimeField()
    transitions = models.PositiveIntegerField(default=0)
    flapping = models.BooleanField(default=False)

    class Meta:
        ordering = ["-last_fired_at"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "subject"], name="%(app_label)s_%(class)s_unique_subject")
        ]
        indexes = [
            # The admin's default list and each evaluation's open alerts of a rule.
            models.Index(fields=["status", "-last_fired_at"], name="drift_alert_status_time"),
        ]

    def __str__(self):
        return f"{self.rule} on {self.subject} ({self.status})"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    """One notification of an alert to a channel, created when the lifecycle decides it is due
    and claimed by the task that sends it (drift.alerts.services): pending → sending → sent |
    failed. Unique per (alert, channel, due_at), so a redelivered or duplicated task finds the
    row already claimed or sent and sends nothing. ``delivery_id`` is the same on every attempt,
    so receivers can drop a repeat (a retry after a worker died mid-send)."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="notifications")
    due_at = models.DateTimeField(help_text="The evaluation that decided it (the alert's last_notified_at then).")
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=8, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the latest attempt started.")
    # Pending: when to try (after a retry's backoff). Sending: when the claim counts as lost.
    next_attempt_at = models.DateTimeField(help_text="When to try it, or when its current attempt counts as lost.")
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When the transport accepted it.")
    last_error = models.TextField(blank=True)
    attempt_log = models.JSONField(default=list, blank=True, help_text="[{attempt, at, outcome, error}]")

    class Meta:
        ordering = ["-due_at"]
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel", "due_at"], name="%(app_label)s_%(class)s_unique_due")
        ]
        indexes = [
            models.Index(fields=["alert", "-due_at"], name="drift_notification_alert_time"),
            # The sweep for lost tasks reads the unfinished rows only.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status__in=["pending", "sending"]),
                name="drift_notification_unfinished",
            ),
        ]

    def __str__(self):
        return f"{self.alert_id} → {self.channel} @ {self.due_at:%Y-%m-%d %H:%M:%S} ({self.status})"
