"""The labeling queue, its labels and reviews, and dataset snapshots.

A ``LabelTask`` is one sample to label, copied from where it came from (an uncertain prediction
log, a quarantined or confirmed-drift sample, a random audit pick, a device's feedback) so the
queue keeps working after the source rows are pruned. Labelers claim tasks with a lease; a
``Label`` is one labeler's answer (undo marks it undone, a reviewer accepts or rejects it).
A ``DatasetSnapshot`` freezes the accepted labels of a class set: its items never change.
The rules live in ``labeling.services`` (queue) and ``labeling.snapshots``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ClassSet(models.Model):
    """The classes one model predicts ('digits' for every digits@N version). A label outside
    them is refused."""

    name = models.CharField(max_length=80, unique=True, help_text="The model name, as in model versions 'name@N'.")
    classes = models.JSONField(help_text='The class labels in order, e.g. ["0", "1", ..., "9"].')
    review_required = models.BooleanField(
        default=False, help_text="Labels need a reviewer's acceptance before they count."
    )
    gold_rate = models.FloatField(default=0.0, help_text="Share (0–1) of served tasks that are gold tasks.")
    audit_rate = models.FloatField(
        default=0.0, help_text="Share (0–1) of confident predictions queued as random audit tasks."
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [
            ("label_tasks", "Can label tasks"),
            ("review_labels", "Can review labels"),
            ("lead_labeling", "Can see labelers' quality and throughput"),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        classes = self.classes
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
            raise ValidationError({"classes": "Must be a non-empty list of class names (strings)."})
        if len(set(classes)) != len(classes):
            raise ValidationError({"classes": "Class names must be unique."})
        if len(classes) > 100 or any(len(c) > 100 for c in classes):
            raise ValidationError({"classes": "At most 100 classes of at most 100 characters."})
        for name in ("gold_rate", "audit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValidationError({name: "Must be between 0 and 1."})


class TaskSource(models.TextChoices):
    UNCERTAIN = "uncertain", "Uncertain prediction"
    QUARANTINE = "quarantine", "Quarantined sample"
    DRIFT = "drift", "Confirmed-drift sample"
    AUDIT = "audit", "Random audit"
    FEEDBACK = "feedback", "Feedback"
    MANUAL = "manual", "Chosen by an operator"


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    LEASED = "leased", "Leased"
    LABELED = "labeled", "Labeled, awaiting review"
    DONE = "done", "Done"
    FOLDED = "folded", "Folded into a near-duplicate"


class LabelTask(models.Model):
    key = models.CharField(
        max_length=200, unique=True, help_text="Where it came from, e.g. 'prediction:<device>:<id>': queued once."
    )
    source = models.CharField(max_length=12, choices=TaskSource.choices)
    class_set = models.ForeignKey(ClassSet, on_delete=models.PROTECT, related_name="tasks")
    status = models.CharField(max_length=8, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    created = models.DateTimeField(default=timezone.now)

    # What the labeler sees.
    device = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    prediction_id = models.UUIDField(null=True, blank=True, help_text="The prediction log's client id.")
    drift_sample = models.ForeignKey(
        "drift.DriftSample", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    image_area = models.CharField(max_length=32, blank=True)
    image_key = models.CharField(max_length=300, blank=True)
    model_version = models.CharField(max_length=80, blank=True)
    predicted_label = models.CharField(max_length=100, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(null=True, blank=True, help_text="Top-k label → probability.")
    features = models.BinaryField(null=True, blank=True, help_text="float32 little-endian feature vector.")

    # Ordering: higher first.
    uncertainty = models.FloatField(default=0.0)
    incident = models.ForeignKey("drift.Incident", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    priority = models.FloatField(default=0.0)
    fold_key = models.CharField(max_length=40, blank=True, help_text="Bucket of near-duplicate feature vectors.")
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="duplicates"
    )
    duplicate_count = models.PositiveIntegerField(default=0, help_text="Near-duplicates folded into this task.")

    # Gold tasks have a known answer and measure labelers.
    gold_label = models.CharField(max_length=100, blank=True)

    # The lease of the labeler working on it.
    leased_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-priority", "id"]
        indexes = [
            # "Next task": the highest-priority pending task of a class set.
            models.Index(
                fields=["class_set", "-priority", "id"],
                condition=Q(status="pending"),
                name="labeling_task_next",
            ),
            # "Next task" across class sets (the labeling page's default).
            models.Index(fields=["-priority", "id"], condition=Q(status="pending"), name="labeling_task_next_any"),
            # Expired leases back to the queue.
            models.Index(fields=["lease_expires_at"], condition=Q(status="leased"), name="labeling_task_lease"),
            # Folding: pending tasks in the same bucket.
            models.Index(fields=["class_set", "fold_key"], condition=Q(status="pending"), name="labeling_task_fold"),
            models.Index(fields=["status", "created"], name="labeling_task_status_time"),
            models.Index(fields=["device", "prediction_id"], name="labeling_task_prediction"),
        ]

    def __str__(self):
        return f"{self.get_source_display()} task {self.pk} ({self.class_set_id})"

    @property
    def is_gold(self) -> bool:
        return bool(self.gold_label)

    @property
    def top(self) -> list[tuple[str, float]]:
        """The model's top-3 (label, probability), highest first."""
        items = sorted((self.probabilities or {}).items(), key=lambda item: -item[1])
        return items[:3]


class LabelOrigin(models.TextChoices):
    LABELER = "labeler", "Labeler"
    FEEDBACK = "feedback", "Feedback from a device or application"
    OPERATOR = "operator", "Operator"


class ReviewStatus(models.TextChoices):
    UNREVIEWED = "unreviewed", "Not reviewed"
    # Given in a class set without review: counts at once and stays out of the review index.
    NOT_NEEDED = "not_needed", "No review needed"
    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"


class Label(models.Model):
    task = models.ForeignKey(LabelTask, on_delete=models.CASCADE, related_name="labels")
    client_id = models.UUIDField(null=True, blank=True, help_text="Idempotency key of a feedback record.")
    value = models.CharField(max_length=100)
    origin = models.CharField(max_length=10, choices=LabelOrigin.choices, default=LabelOrigin.LABELER)
    labeled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    device = models.ForeignKey(
        "devices.Device",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The device that sent it as feedback.",
    )
    created = models.DateTimeField(default=timezone.now)
    seconds = models.FloatField(null=True, blank=True, help_text="Time from serving the task to the answer.")
    undone_at = models.DateTimeField(null=True, blank=True)
    review = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.UNREVIEWED)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "client_id"],
                condition=Q(client_id__isnull=False),
                name="%(app_label)s_%(class)s_unique_feedback",
            )
        ]
        indexes = [
            models.Index(fields=["labeled_by", "-created"], name="labeling_label_labeler_time"),
            models.Index(fields=["task", "-created"], name="labeling_label_task_time"),
            # The review queue.
            models.Index(
                fields=["created"], condition=Q(review="unreviewed", undone_at=None), name="labeling_label_review"
            ),
        ]

    def __str__(self):
        return f"{self.value} on task {self.task_id}"

    @property
    def live(self) -> bool:
        return self.undone_at is None and self.review != ReviewStatus.REJECTED


class ExportStatus(models.TextChoices):
    NONE = "", "Not exported"
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class FrozenSnapshotError(Exception):
    """A change to a sealed snapshot or its items: they are written once, by ``create_snapshot``."""


EXPORT_FIELDS = frozenset(
    {"export_status", "export_key", "export_size", "export_sha256", "export_error", "exported_at", "export_started_at"}
)


class SnapshotQuerySet(models.QuerySet):
    def update(self, **kwargs):
        # The export task claims and finishes exports with conditional updates; nothing else moves.
        if not set(kwargs) <= EXPORT_FIELDS:
            raise FrozenSnapshotError("Only a snapshot's export fields may change.")
        return super().update(**kwargs)


class SnapshotItemQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise FrozenSnapshotError("Snapshot items never change.")

    def delete(self):
        # Deleting a snapshot still removes its items: the cascade goes through the base manager.
        raise FrozenSnapshotError("Snapshot items go only with their snapshot.")


class DatasetSnapshot(models.Model):
    """An immutable, versioned set of accepted labels of one class set. Its content hash covers
    every item (task, label, sample reference), so two snapshots with the same items hash alike.

    Sealed once its content hash is set (inside the transaction that creates it): from then on
    ``save()`` and ``update()`` change only the ``export_*`` fields, and raise
    ``FrozenSnapshotError`` for anything else."""

    EXPORT_FIELDS = EXPORT_FIELDS

    class_set = models.ForeignKey(ClassSet, on_delete=models.PROTECT, related_name="snapshots")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    content_hash = models.CharField(max_length=64)
    item_count = models.PositiveIntegerField()
    class_counts = models.JSONField(default=dict)
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    export_status = models.CharField(max_length=8, choices=ExportStatus.choices, default=ExportStatus.NONE, blank=True)
    export_key = models.CharField(max_length=300, blank=True, help_text="Name of the archive in the artifacts storage.")
    export_size = models.BigIntegerField(null=True, blank=True)
    export_sha256 = models.CharField(max_length=64, blank=True)
    export_error = models.TextField(blank=True)
    exported_at = models.DateTimeField(null=True, blank=True)
    export_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When the running export began; one running far longer is taken over."
    )

    objects = SnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["class_set", "version"], name="%(app_label)s_%(class)s_unique_version")
        ]

    def __str__(self):
        return f"{self.class_set.name} v{self.version}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            self._refuse_frozen_changes(kwargs.get("update_fields"))
        super().save(*args, **kwargs)

    @property
    def same_content_as_parent(self) -> bool:
        return self.parent_id is not None and self.parent.content_hash == self.content_hash

    def _refuse_frozen_changes(self, update_fields) -> None:
        if update_fields is not None and set(update_fields) <= EXPORT_FIELDS:
            return
        frozen = [f.attname for f in self._meta.concrete_fields if f.name not in EXPORT_FIELDS and not f.primary_key]
        stored = type(self)._base_manager.filter(pk=self.pk).values(*frozen).first()
        if stored is None or not stored["content_hash"]:
            return  # a new row, or one its creating transaction is still writing
        changed = sorted(name for name, value in stored.items() if getattr(self, name) != value)
        if changed:
            raise FrozenSnapshotError(f"Snapshot {self.pk} is sealed: {', '.join(changed)} cannot change.")


class SnapshotItem(models.Model):
    """One labeled sample of a snapshot, written once with it."""

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="items")
    task_id = models.BigIntegerField(help_text="The task it came from (kept even if the task is deleted).")
    label = models.CharField(max_length=100)
    origin = models.CharField(max_length=10, choices=LabelOrigin.choices)
    image_area = models.CharField(max_length=32, blank=True)
    image_key = models.CharField(max_length=300, blank=True)
    features = models.BinaryField(null=True, blank=True)
    model_version = models.CharField(max_length=80, blank=True)
    predicted_label = models.CharField(max_length=100, blank=True)

    objects = SnapshotItemQuerySet.as_manager()

    class Meta:
        ordering = ["snapshot", "task_id"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "task_id"], name="%(app_label)s_%(class)s_unique_task")
        ]

    def __str__(self):
        return f"{self.label} (task {self.task_id})"

    def save(self, *args, **kwargs):
        if self.pk is not None and type(self)._base_manager.filter(pk=self.pk).exists():
            raise FrozenSnapshotError("Snapshot items never change.")
        if DatasetSnapshot._base_manager.filter(pk=self.snapshot_id).exclude(content_hash="").exists():
            raise FrozenSnapshotError(f"Snapshot {self.snapshot_id} is sealed: no item can be added.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise FrozenSnapshotError("Snapshot items go only with their snapshot.")


class SnapshotRequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class SnapshotRequest(models.Model):
    """An operator's "snapshot this class set", built by the ``labeling.create_snapshot`` task.

    Pending until the task's transaction commits the snapshot and this row together (a worker
    that dies mid-way leaves it pending, to be built again); then done with its snapshot, or
    failed with the reason. The API answers a creation with 202 and this row's URL to poll."""

    class_set = models.ForeignKey(ClassSet, on_delete=models.PROTECT, related_name="snapshot_requests")
    note = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    status = models.CharField(
        max_length=8, choices=SnapshotRequestStatus.choices, default=SnapshotRequestStatus.PENDING
    )
    snapshot = models.ForeignKey(
        DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests"
    )
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [
            # Requests whose task message was lost: pending for long (labeling.recover_snapshot_work).
            models.Index(fields=["created"], condition=Q(status="pending"), name="labeling_snapreq_pending"),
        ]

    def __str__(self):
        return f"snapshot of {self.class_set.name} requested {self.created:%Y-%m-%d %H:%M}"
