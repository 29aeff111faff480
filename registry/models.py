"""Model families and versions, aliases with their history, retraining policies and jobs,
rollouts and per-device assignments.

A ``ModelFamily`` is one model name ("digits"); its versions are ``digits@1``, ``digits@2`` …
as devices report them. Aliases (``champion``, ``challenger``) point at versions; every move is
an ``AliasEvent`` row that is never changed, so "what was champion at 14:02" is one query.
A ``RetrainingPolicy`` says when a ``TrainingJob`` runs; a job that wins against the champion
registers a version and points ``challenger`` at it. A ``Rollout`` sends a version to devices
in phases; each device gets a ``RolloutAssignment`` whose state follows what the device reports,
and every automatic or manual decision is a ``RolloutDecision`` with its evidence.
The rules live in ``registry.versions``, ``registry.policies``, ``registry.training`` and
``registry.rollouts``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
CHAMPION, CHALLENGER = "champion", "challenger"


class ModelFamily(models.Model):
    """One model name; its classes come from the labeling class set of the same name."""

    name = models.SlugField(max_length=80, unique=True, help_text="As in versions 'name@N'.")
    class_set = models.OneToOneField("labeling.ClassSet", on_delete=models.PROTECT, related_name="family")
    description = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "model families"

    def __str__(self):
        return self.name


class VersionStatus(models.TextChoices):
    REGISTERED = "registered", "Registered"
    ARCHIVED = "archived", "Archived"


class ModelVersion(models.Model):
    """One immutable device bundle of a family, with its lineage and declared needs."""

    family = models.ForeignKey(ModelFamily, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.REGISTERED)
    archived_reason = models.TextField(blank=True)
    # The bundle: a tar.gz in the artifacts storage holding manifest.json, transform.json, knn.npz
    # (and optionally an extractor .tflite); the device checks size and sha256 before using it.
    bundle_key = models.CharField(max_length=300)
    bundle_sha256 = models.CharField(max_length=64)
    bundle_size = models.BigIntegerField()
    manifest = models.JSONField(default=dict, help_text="manifest.json of the bundle.")
    classes = models.JSONField(default=list)
    feature_dim = models.PositiveIntegerField(help_text="Input dimension (extractor output).")
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    # What a device needs to run it, checked by a rollout's preflight against what it reports.
    min_memory_mb = models.PositiveIntegerField(default=0)
    runtime = models.JSONField(
        default=dict, blank=True, help_text='Minimum runtime versions, e.g. {"numpy": "1.26", "client": "0.1"}.'
    )
    # Lineage.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    snapshot = models.ForeignKey(
        "labeling.DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT, related_name="model_versions"
    )
    training_job = models.OneToOneField(
        "TrainingJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_version"
    )
    policy = models.ForeignKey(
        "RetrainingPolicy", null=True, blank=True, on_delete=models.SET_NULL, related_name="versions"
    )
    incidents = models.ManyToManyField("drift.Incident", blank=True, related_name="model_versions")
    mlflow_run_id = models.CharField(max_length=64, blank=True)
    mlflow_model_version = models.CharField(max_length=20, blank=True)
    source = models.CharField(max_length=20, default="training", help_text="training, shipped or upload.")
    created = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-family_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["family", "number"], name="%(app_label)s_%(class)s_unique_number"),
        ]
        indexes = [models.Index(fields=["family", "-number"], name="registry_version_family_number")]

    def __str__(self):
        return self.label

    @property
    def label(self) -> str:
        """The name devices report: ``family@number``."""
        return f"{self.family.name}@{self.number}"


class Alias(models.Model):
    """Where an alias points now. Moves go through registry.versions.move_alias, which writes
    the AliasEvent that records it."""

    family = models.ForeignKey(ModelFamily, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=40)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["family", "name"], name="%(app_label)s_%(class)s_unique_name")]

    def __str__(self):
        return f"{self.family.name}@{self.name}"


class AliasEvent(models.Model):
    """Append-only history of alias moves: version is null when the alias was removed."""

    family = models.ForeignKey(ModelFamily, on_delete=models.CASCADE, related_name="alias_events")
    alias = models.CharField(max_length=40)
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    previous = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField(default=timezone.now)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["family", "alias", "-at"], name="registry_alias_event_at")]

    def __str__(self):
        return f"{self.alias} → {self.version_id} at {self.at:%Y-%m-%d %H:%M}"


class Strategy(models.TextChoices):
    FULL = "full", "Full (every accepted label)"
    SLIDING_WINDOW = "window", "Sliding window (recent labels only)"
    REPLAY = "replay", "Recent labels + replay of older data"


class RetrainingPolicy(models.Model):
    """When to retrain a family. A trigger needs (drift confirmed, or a report's drift share at
    or above the threshold) and at least ``min_new_labels`` accepted labels since the last job;
    or the schedule; or an operator's hand. One job at a time, a cooldown between jobs, and a
    circuit breaker that stops triggering after ``max_failures`` failures in a row."""

    name = models.CharField(max_length=80, unique=True)
    family = models.ForeignKey(ModelFamily, on_delete=models.CASCADE, related_name="policies")
    enabled = models.BooleanField(default=True)
    on_confirmed_drift = models.BooleanField(default=True, help_text="Trigger on a confirmed drift event.")
    drift_share_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Trigger when a drift report's share of drifted features reaches this (blank: off).",
    )
    min_new_labels = models.PositiveIntegerField(default=50)
    schedule_hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="Also retrain every N hours when new labels exist (blank: off)."
    )
    cooldown_minutes = models.PositiveIntegerField(default=60)
    max_failures = models.PositiveIntegerField(default=3, help_text="Consecutive failures that open the breaker.")
    breaker_minutes = models.PositiveIntegerField(default=24 * 60, help_text="How long an open breaker stays open.")
    # Training.
    strategy = models.CharField(max_length=6, choices=Strategy.choices, default=Strategy.REPLAY)
    window_days = models.PositiveIntegerField(default=30, help_text="Sliding window and replay: what counts as recent.")
    replay_share = models.FloatField(
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Replay: older samples (and the shipped training data) as a share of the recent ones.",
    )
    promotion_margin = models.FloatField(
        default=0.01, help_text="Accuracy the candidate must gain over the champion to become challenger."
    )
    search = models.JSONField(
        default=dict, blank=True, help_text='Hyper-parameter grid, e.g. {"n_components": [16, 32], "k": [3, 5]}.'
    )
    # State.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    breaker_open_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_job_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "retraining policies"

    def __str__(self):
        return self.name


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PROMOTED = "promoted", "Promoted to challenger"
    ARCHIVED = "archived", "Trained, not promoted"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class TrainingJob(models.Model):
    family = models.ForeignKey(ModelFamily, on_delete=models.CASCADE, related_name="jobs")
    policy = models.ForeignKey(RetrainingPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    status = models.CharField(max_length=9, choices=JobStatus.choices, default=JobStatus.QUEUED)
    trigger = models.CharField(max_length=20, help_text="drift, drift_share, schedule, manual.")
    evidence = models.JSONField(default=dict, blank=True, help_text="What made it run.")
    incidents = models.ManyToManyField("drift.Incident", blank=True, related_name="training_jobs")
    snapshot = models.ForeignKey(
        "labeling.DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT, related_name="training_jobs"
    )
    base_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The champion when the job started: the one to beat.",
    )
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=80, blank=True)
    params = models.JSONField(default=dict, blank=True, help_text="Strategy and search used.")
    result = models.JSONField(default=dict, blank=True, help_text="Evaluation of candidate and champion.")
    reason = models.TextField(blank=True, help_text="Why it was promoted, archived or failed.")
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claim = models.CharField(max_length=64, blank=True, help_text="Task id holding the job.")
    mlflow_run_id = models.CharField(max_length=64, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress; stale jobs are failed.")

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            # One job per policy at a time, whoever starts it.
            models.UniqueConstraint(
                fields=["policy"],
                condition=Q(status__in=["queued", "running"]),
                name="%(app_label)s_%(class)s_one_active_per_policy",
            ),
        ]
        indexes = [models.Index(fields=["family", "-created"], name="registry_job_family_created")]

    def __str__(self):
        return f"job {self.pk} ({self.family.name}, {self.status})"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES


class RolloutStatus(models.TextChoices):
    AWAITING_APPROVAL = "approval", "Awaiting approval"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    HALTED = "halted", "Halted (rolled back)"
    CANCELLED = "cancelled", "Cancelled"


LIVE_ROLLOUT_STATUSES = (RolloutStatus.AWAITING_APPROVAL, RolloutStatus.RUNNING, RolloutStatus.PAUSED)


class TargetKind(models.TextChoices):
    ALL = "all", "All devices"
    GROUPS = "groups", "Device groups"
    DEVICES = "devices", "A list of devices"
    FILTER = "filter", "A saved filter"


def default_phases() -> list:
    return [0.1, 0.5, 1.0]


def default_gates() -> dict:
    return {
        "min_install_success": 0.9,
        "max_failed": 5,
        "max_drift_rate_ratio": 2.0,
        "max_confidence_drop": 0.05,
        "max_latency_ratio": 1.5,
        "min_observation_minutes": 10,
        "min_reporting_share": 0.5,
        "min_predictions": 50,
    }


class Rollout(models.Model):
    """Send ``version`` to the devices of a target, in phases (shares of the target), gated by
    install success and model health against the devices still on ``baseline``."""

    family = models.ForeignKey(ModelFamily, on_delete=models.CASCADE, related_name="rollouts")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rollouts")
    baseline = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Last known good version: what a fleet rollback goes back to.",
    )
    name = models.CharField(max_length=120, blank=True)
    status = models.CharField(max_length=9, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING)
    target_kind = models.CharField(max_length=7, choices=TargetKind.choices, default=TargetKind.ALL)
    target_groups = models.ManyToManyField("devices.DeviceGroup", blank=True, related_name="+")
    target_devices = models.ManyToManyField("devices.Device", blank=True, related_name="+")
    target_filter = models.JSONField(
        default=dict,
        blank=True,
        help_text='Saved filter, matched again as devices join: {"group": "...", "tags": [...], '
        '"hardware": "...", "location": "...", "status": "..."}.',
    )
    phases = models.JSONField(default=default_phases, help_text="Cumulative shares of the target, ending at 1.0.")
    phase = models.PositiveIntegerField(default=0, help_text="Index of the current phase.")
    phase_started_at = models.DateTimeField(null=True, blank=True)
    gates = models.JSONField(default=default_gates, blank=True)
    auto_advance = models.BooleanField(default=True)
    auto_rollback = models.BooleanField(default=True)
    require_approval = models.BooleanField(default=False, help_text="An operator approves before the first phase.")
    download_timeout_minutes = models.PositiveIntegerField(default=30)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    finished_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="Why it ended, halted or paused.")

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            # One live rollout per family: two would fight over the same devices.
            models.UniqueConstraint(
                fields=["family"],
                condition=Q(status__in=["approval", "running", "paused"]),
                name="%(app_label)s_%(class)s_one_live_per_family",
            ),
        ]

    def __str__(self):
        return self.name or f"rollout {self.pk} of {self.version}"

    def clean(self):
        phases = self.phases
        if (
            not isinstance(phases, list)
            or not phases
            or not all(isinstance(p, int | float) and not isinstance(p, bool) and 0 < p <= 1 for p in phases)
            or any(b <= a for a, b in zip(phases, phases[1:], strict=False))
            or phases[-1] != 1
        ):
            raise ValidationError({"phases": "Must be increasing shares in (0, 1] ending at 1, e.g. [0.1, 0.5, 1.0]."})


class AssignmentState(models.TextChoices):
    ASSIGNED = "assigned", "Assigned"
    DOWNLOADING = "downloading", "Downloading"
    ACTIVE = "active", "Active"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    EXCLUDED = "excluded", "Excluded by preflight"


IN_PROGRESS_STATES = (AssignmentState.ASSIGNED, AssignmentState.DOWNLOADING)


class RolloutAssignment(models.Model):
    """One device's part in a rollout: which version it should run and where it stands."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="assignments")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="rollout_assignments")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    phase = models.PositiveIntegerField()
    state = models.CharField(max_length=11, choices=AssignmentState.choices, default=AssignmentState.ASSIGNED)
    reason = models.TextField(blank=True)
    assigned_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="First sync that carried it.")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Failed as timed out past this.")
    active_at = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rollout", "device"], name="%(app_label)s_%(class)s_unique_device"),
        ]
        indexes = [
            models.Index(fields=["device", "-assigned_at"], name="registry_assignment_device"),
            models.Index(fields=["rollout", "state"], name="registry_assignment_state"),
            models.Index(
                fields=["deadline_at"],
                condition=Q(state__in=["assigned", "downloading"], deadline_at__isnull=False),
                name="registry_assignment_deadline",
            ),
        ]

    def __str__(self):
        return f"{self.device_id} → {self.version_id} ({self.state})"


class RolloutDecision(models.Model):
    """Every decision on a rollout, automatic or by an operator, with the evidence behind it."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="decisions")
    action = models.CharField(max_length=20, help_text="start, approve, advance, hold, halt, pause, resume, …")
    phase = models.PositiveIntegerField()
    automatic = models.BooleanField(default=True)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    at = models.DateTimeField(default=timezone.now)
    reason = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.action} (phase {self.phase})"
