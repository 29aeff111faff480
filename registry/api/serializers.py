"""Serializers of the registry's operator API: read-only views of the rows, and the bodies of
the actions (alias moves, starting a rollout). The rules stay in the services; these only check
shapes and look names up."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.models import Device, DeviceGroup
from registry import versions
from registry.models import (
    ALIAS_PATTERN,
    AliasEvent,
    ModelFamily,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutDecision,
    TargetKind,
    TrainingJob,
)
from sphere.api import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField


def label_of(version: ModelVersion | None) -> str | None:
    return version.label if version is not None else None


# --- families, versions, aliases --------------------------------------------------------------


class FamilySerializer(serializers.ModelSerializer):
    class_set = serializers.SlugRelatedField(slug_field="name", read_only=True)
    classes = serializers.ListField(source="class_set.classes", read_only=True)
    aliases = serializers.SerializerMethodField(help_text="Alias name → version label.")
    latest_number = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = ModelFamily
        fields = ["id", "name", "class_set", "classes", "description", "created", "latest_number", "aliases"]
        read_only_fields = fields

    def get_aliases(self, obj) -> dict[str, str]:
        # Prefetched with their versions (FamilyViewSet.queryset): no query per family.
        return {alias.name: f"{obj.name}@{alias.version.number}" for alias in obj.aliases.all()}


class VersionSerializer(serializers.ModelSerializer):
    """A row of the version list: what a page of 100 needs, nothing that costs a query per row."""

    family = serializers.SlugRelatedField(slug_field="name", read_only=True)
    label = serializers.CharField(read_only=True)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "label",
            "family",
            "number",
            "status",
            "source",
            "created",
            "feature_dim",
            "bundle_sha256",
            "bundle_size",
            "metrics",
            "aliases",
            "parent",
        ]
        read_only_fields = fields

    def get_aliases(self, obj) -> list[str]:
        return sorted(alias.name for alias in obj.aliases.all())


class VersionDetailSerializer(VersionSerializer):
    """One version with its lineage: where it came from and what it was trained on."""

    lineage = serializers.SerializerMethodField()
    bundle_url = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta(VersionSerializer.Meta):
        fields = [
            *VersionSerializer.Meta.fields,
            "archived_reason",
            "classes",
            "manifest",
            "params",
            "min_memory_mb",
            "runtime",
            "bundle_url",
            "created_by",
            "lineage",
        ]
        read_only_fields = fields

    def get_bundle_url(self, obj) -> str:
        return versions.bundle_url(obj)

    def get_lineage(self, obj) -> dict:
        snapshot, job, policy = obj.snapshot, obj.training_job, obj.policy
        return {
            "parent": {"id": obj.parent_id, "label": obj.parent.label} if obj.parent_id else None,
            "snapshot": (
                {
                    "id": snapshot.pk,
                    "class_set": snapshot.class_set.name,
                    "version": snapshot.version,
                    "content_hash": snapshot.content_hash,
                }
                if snapshot
                else None
            ),
            "training_job": {"id": job.pk, "status": job.status, "trigger": job.trigger} if job else None,
            "policy": {"id": policy.pk, "name": policy.name} if policy else None,
            "incidents": sorted(incident.pk for incident in obj.incidents.all()),
            "mlflow_run_id": obj.mlflow_run_id,
            "mlflow_model_version": obj.mlflow_model_version,
            "children": [child.label for child in obj.children.select_related("family").order_by("number")[:50]],
        }


class AliasMoveSerializer(serializers.Serializer):
    alias = StrictCharField(max_length=40)
    version = serializers.JSONField(
        allow_null=True,
        help_text='A number (4), a label ("digits@4"), another alias ("challenger"), or null to remove the alias.',
    )
    reason = StrictCharField(required=False, default="", allow_blank=True, max_length=2000)

    def validate_alias(self, value: str) -> str:
        if not re.match(ALIAS_PATTERN, value):
            raise serializers.ValidationError("Lower-case letters, digits, '-' and '_', starting with a letter.")
        return value

    def validate_version(self, value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
            raise serializers.ValidationError('A version number, a label like "digits@4", an alias, or null.')
        try:
            return versions.resolve(self.context["family"].name, str(value))
        except versions.VersionNotFound as exc:
            raise serializers.ValidationError(str(exc))


class AliasEventSerializer(serializers.ModelSerializer):
    version = serializers.SerializerMethodField()
    previous = serializers.SerializerMethodField()
    by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = AliasEvent
        fields = ["id", "alias", "version", "previous", "at", "by", "reason"]
        read_only_fields = fields

    def get_version(self, obj) -> str | None:
        return label_of(obj.version)

    def get_previous(self, obj) -> str | None:
        return label_of(obj.previous)


# --- policies and jobs ------------------------------------------------------------------------


class PolicySerializer(serializers.ModelSerializer):
    family = serializers.SlugRelatedField(slug_field="name", read_only=True)
    active_job = serializers.IntegerField(read_only=True, allow_null=True, help_text="The queued or running job.")

    class Meta:
        model = RetrainingPolicy
        fields = [
            "id",
            "name",
            "family",
            "enabled",
            "on_confirmed_drift",
            "drift_share_threshold",
            "min_new_labels",
            "schedule_hours",
            "cooldown_minutes",
            "max_failures",
            "breaker_minutes",
            "strategy",
            "window_days",
            "replay_share",
            "promotion_margin",
            "search",
            "consecutive_failures",
            "breaker_open_until",
            "last_job_at",
            "last_checked_at",
            "active_job",
            "created",
        ]
        read_only_fields = fields


class PolicyDetailSerializer(PolicySerializer):
    decision = serializers.SerializerMethodField(help_text="What the policy would decide now, and why.")

    class Meta(PolicySerializer.Meta):
        fields = [*PolicySerializer.Meta.fields, "decision"]
        read_only_fields = fields

    def get_decision(self, obj) -> dict:
        from registry.policies import evaluate_policy

        decision = evaluate_policy(obj)
        return {"trigger": decision.trigger, "reason": decision.reason, "evidence": decision.evidence}


class ReasonSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, default="", allow_blank=True, max_length=2000)


class JobSerializer(serializers.ModelSerializer):
    family = serializers.SlugRelatedField(slug_field="name", read_only=True)
    policy_name = serializers.SerializerMethodField()
    base_version = serializers.SerializerMethodField()
    version = serializers.SerializerMethodField(help_text="The version the job registered, if any.")
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "family",
            "policy",
            "policy_name",
            "status",
            "trigger",
            "evidence",
            "progress",
            "stage",
            "snapshot",
            "base_version",
            "version",
            "params",
            "result",
            "reason",
            "error",
            "attempts",
            "mlflow_run_id",
            "requested_by",
            "created",
            "started_at",
            "finished_at",
            "heartbeat_at",
        ]
        read_only_fields = fields

    def get_policy_name(self, obj) -> str | None:
        return obj.policy.name if obj.policy_id else None

    def get_base_version(self, obj) -> str | None:
        return label_of(obj.base_version)

    def get_version(self, obj) -> str | None:
        return label_of(getattr(obj, "produced_version", None))


# --- rollouts ---------------------------------------------------------------------------------


class RolloutSerializer(serializers.ModelSerializer):
    family = serializers.SlugRelatedField(slug_field="name", read_only=True)
    version = serializers.SerializerMethodField()
    baseline = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    assignments = serializers.SerializerMethodField(help_text="Assignments per state.")

    class Meta:
        model = Rollout
        fields = [
            "id",
            "name",
            "family",
            "version",
            "version_id",
            "baseline",
            "status",
            "target_kind",
            "target_filter",
            "phases",
            "phase",
            "phase_started_at",
            "gates",
            "auto_advance",
            "auto_rollback",
            "require_approval",
            "download_timeout_minutes",
            "assignments",
            "reason",
            "created",
            "created_by",
            "finished_at",
        ]
        read_only_fields = fields

    def get_version(self, obj) -> str:
        return obj.version.label

    def get_baseline(self, obj) -> str | None:
        return label_of(obj.baseline)

    def get_assignments(self, obj) -> dict[str, int]:
        # Counted for the whole page in one query (RolloutViewSet.get_serializer_context).
        counts = self.context.get("assignment_counts")
        if counts is None:
            counts = assignment_counts([obj.pk])
        return counts.get(obj.pk, {})


def assignment_counts(rollout_pks) -> dict[int, dict[str, int]]:
    from django.db.models import Count

    from registry.models import RolloutAssignment

    rows = (
        RolloutAssignment.objects.filter(rollout_id__in=list(rollout_pks))
        .values("rollout_id", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["rollout_id"], {})[row["state"]] = row["n"]
    return counts


class DecisionSerializer(serializers.ModelSerializer):
    by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = RolloutDecision
        fields = ["id", "action", "phase", "automatic", "by", "at", "reason", "evidence"]
        read_only_fields = fields


DECISIONS_SHOWN = 50


class RolloutDetailSerializer(RolloutSerializer):
    summary = serializers.SerializerMethodField(help_text="registry.rollouts.rollout_summary: counts per phase, gates.")
    target = serializers.SerializerMethodField()
    decisions = serializers.SerializerMethodField(help_text=f"The newest {DECISIONS_SHOWN} decisions.")

    class Meta(RolloutSerializer.Meta):
        fields = [*RolloutSerializer.Meta.fields, "target", "summary", "decisions"]
        read_only_fields = fields

    def get_summary(self, obj) -> dict:
        from registry.rollouts import rollout_summary

        return rollout_summary(obj)

    def get_target(self, obj) -> dict:
        from registry.rollouts import describe_target

        return describe_target(obj)

    def get_decisions(self, obj) -> list[dict]:
        decisions = obj.decisions.select_related("by").order_by("-at", "-id")[:DECISIONS_SHOWN]
        return DecisionSerializer(decisions, many=True).data


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string", "example": "digits@4"}]})
class VersionRefField(serializers.Field):
    """A version by id (an integer) or by label ("digits@4", "digits@champion")."""

    default_error_messages = {
        "type": 'A version id (integer) or a label like "digits@4".',
        "id": "No version with id {value}.",
    }

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("type")
        if isinstance(data, int):
            version = ModelVersion.objects.select_related("family").filter(pk=data).first()
            if version is None:
                self.fail("id", value=data)
            return version
        family, at, ref = data.strip().partition("@")
        if not at or not family or not ref:
            self.fail("type")
        try:
            return versions.resolve(family, ref)
        except versions.VersionNotFound as exc:
            raise serializers.ValidationError(str(exc))

    def to_representation(self, value):
        return value.label


class RolloutCreateSerializer(serializers.Serializer):
    version = VersionRefField()
    target_kind = serializers.ChoiceField(
        choices=TargetKind.choices,
        required=False,
        help_text="Default: devices if devices are given, else groups if groups are, else filter if a "
        "target_filter is, else all.",
    )
    groups = serializers.ListField(child=serializers.JSONField(), required=False, default=list)
    devices = serializers.ListField(child=serializers.UUIDField(), required=False, default=list, max_length=100_000)
    target_filter = serializers.DictField(required=False, default=dict)
    phases = serializers.ListField(child=StrictFloatField(), required=False, min_length=1, max_length=20)
    gates = serializers.DictField(required=False, default=dict)
    require_approval = StrictBooleanField(required=False, default=False)
    auto_advance = StrictBooleanField(required=False, default=True)
    auto_rollback = StrictBooleanField(required=False, default=True)
    download_timeout_minutes = StrictIntegerField(required=False, default=30, min_value=1, max_value=7 * 24 * 60)
    name = StrictCharField(required=False, default="", allow_blank=True, max_length=120)

    def validate_groups(self, values) -> list[DeviceGroup]:
        return find_groups(values)

    def validate_devices(self, values) -> list[Device]:
        return find_devices(values)

    def validate(self, data):
        if "target_kind" not in data:
            data["target_kind"] = infer_target_kind(data["groups"], data["devices"], data["target_filter"])
        return data


def find_groups(values) -> list[DeviceGroup]:
    """Device groups by name (or id); an unknown one raises a ValidationError naming it."""
    if any(isinstance(value, bool) or not isinstance(value, int | str) for value in values):
        raise serializers.ValidationError("Groups are given by name (or id).")
    names = {value for value in values if isinstance(value, str)}
    ids = {value for value in values if isinstance(value, int)}
    found = list(DeviceGroup.objects.filter(name__in=names)) + list(DeviceGroup.objects.filter(pk__in=ids))
    missing = (names - {group.name for group in found}) | (ids - {group.pk for group in found})
    if missing:
        raise serializers.ValidationError(f"Unknown group(s): {', '.join(sorted(map(str, missing)))}.")
    return list({group.pk: group for group in found}.values())


def find_devices(values) -> list[Device]:
    wanted = set(values)
    found = list(Device.objects.filter(pk__in=wanted))
    missing = wanted - {device.pk for device in found}
    if missing:
        raise serializers.ValidationError(f"Unknown device(s): {', '.join(sorted(map(str, missing))[:10])}.")
    return found


def infer_target_kind(groups, devices, target_filter) -> str:
    if devices:
        return TargetKind.DEVICES
    if groups:
        return TargetKind.GROUPS
    if target_filter:
        return TargetKind.FILTER
    return TargetKind.ALL


# Fields named by registry.rollouts' ValidationErrors, as this API calls them.
ROLLOUT_FIELD_NAMES = {"target_groups": "groups", "target_devices": "devices"}


def rollout_errors(exc: DjangoValidationError) -> dict:
    """A Django ValidationError from start_rollout as a 400 body naming the API's fields."""
    if not hasattr(exc, "error_dict"):
        return {"non_field_errors": exc.messages}
    return {ROLLOUT_FIELD_NAMES.get(name, name): messages for name, messages in exc.message_dict.items()}


class RolloutActionSerializer(ReasonSerializer):
    force = StrictBooleanField(required=False, default=False, help_text="advance: even if the gates do not pass.")
