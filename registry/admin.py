"""Registry admin: families, versions and their aliases, retraining policies and jobs, rollouts.

Versions, jobs, alias history, assignments and decisions are written by the services only
(``registry.versions``, ``registry.policies``, ``registry.jobs``, ``registry.rollouts``): their
pages are read-only, and every change is an action calling the service and reporting its
refusal. The version and assignment lists never count the whole table (a family may hold
10,000 versions, a rollout one assignment per device). Policies are edited here; a rollout is
started from the add form, which calls ``registry.rollouts.start_rollout``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Max, Prefetch
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from devices.admin import (
    BigTableAdmin,
    DeviceFilter,
    ReadOnlyAdmin,
    RowCountPaginator,
    admin_change_link,
    changelist_link,
    pretty_json,
)
from labeling.models import DatasetSnapshot
from registry import jobs, policies, versions
from registry.models import (
    CHALLENGER,
    CHAMPION,
    LIVE_ROLLOUT_STATUSES,
    Alias,
    AliasEvent,
    ModelFamily,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutAssignment,
    RolloutDecision,
    TargetKind,
    TrainingJob,
)

CHANGE_VERSION = "registry.change_modelversion"
CHANGE_POLICY = "registry.change_retrainingpolicy"
CHANGE_JOB = "registry.change_trainingjob"
CHANGE_ROLLOUT = "registry.change_rollout"
DECISIONS_SHOWN = 50


def json_display(field: str, description: str):
    """A read-only admin column showing a JSON field indented (one per JSON field below)."""

    @admin.display(description=description)
    def show(self, obj):
        return pretty_json(getattr(obj, field))

    return show


class NoDeleteMixin:
    def has_delete_permission(self, request, obj=None):
        return False


def version_label(version: ModelVersion | None) -> str:
    return version.label if version is not None else "—"


def version_link(version: ModelVersion | None) -> str:
    return admin_change_link(ModelVersion, version.pk, version.label) if version is not None else "—"


# --- families ---------------------------------------------------------------------------------


@admin.register(ModelFamily)
class ModelFamilyAdmin(admin.ModelAdmin):
    list_display = ["name", "class_set", "champion", "challenger", "version_count", "created"]
    search_fields = ["name"]
    raw_id_fields = ["class_set"]
    fields = ["name", "class_set", "description", "created", "links"]
    readonly_fields = ["created", "links"]

    def get_queryset(self, request):
        aliases = Alias.objects.filter(name__in=[CHAMPION, CHALLENGER]).select_related("version")
        return (
            super()
            .get_queryset(request)
            .select_related("class_set")
            .prefetch_related(Prefetch("aliases", queryset=aliases))
            .annotate(latest_number=Max("versions__number"))
        )

    def get_readonly_fields(self, request, obj=None):
        # Devices report versions as name@N: renaming a family would orphan every report.
        return [*self.readonly_fields, "name", "class_set"] if obj is not None else self.readonly_fields

    def _alias(self, obj, name):
        found = next((alias for alias in obj.aliases.all() if alias.name == name), None)
        return admin_change_link(ModelVersion, found.version_id, f"{obj.name}@{found.version.number}") if found else "—"

    @admin.display(description="champion")
    def champion(self, obj):
        return self._alias(obj, CHAMPION)

    @admin.display(description="challenger")
    def challenger(self, obj):
        return self._alias(obj, CHALLENGER)

    @admin.display(description="versions", ordering="latest_number")
    def version_count(self, obj):
        text = f"up to {obj.name}@{obj.latest_number}" if obj.latest_number else "none yet"
        return changelist_link(ModelVersion, text, family__id__exact=obj.pk)

    @admin.display(description="records")
    def links(self, obj):
        if obj.pk is None:
            return "—"
        models = [(ModelVersion, "Versions"), (AliasEvent, "Alias history"), (RetrainingPolicy, "Policies")]
        models += [(TrainingJob, "Training jobs"), (Rollout, "Rollouts")]
        return format_html_join(
            " · ", "{}", ((changelist_link(model, text, family__id__exact=obj.pk),) for model, text in models)
        )


# --- versions ---------------------------------------------------------------------------------


class SourceFilter(admin.SimpleListFilter):
    """Fixed values: a DISTINCT over 10,000 versions per page view is not worth it."""

    title = "source"
    parameter_name = "source"

    def lookups(self, request, model_admin):
        return [("training", "Training"), ("shipped", "Shipped"), ("upload", "Upload")]

    def queryset(self, request, queryset):
        return queryset if self.value() is None else queryset.filter(source=self.value())


def metrics_summary(metrics: dict) -> str:
    """Held-out and drift accuracy of a trained version (and its champion's), else the first
    few numeric metrics."""
    if not isinstance(metrics, dict) or not metrics:
        return "—"
    candidate, champion = metrics.get("candidate"), metrics.get("champion")
    if isinstance(candidate, dict):
        parts = [f"held-out {_fmt(candidate.get('holdout_accuracy'))}"]
        if isinstance(champion, dict):
            parts[0] += f" (champion {_fmt(champion.get('holdout_accuracy'))})"
        if candidate.get("drift_samples"):
            parts.append(f"drift {_fmt(candidate.get('drift_accuracy'))}")
        return " · ".join(parts)
    numbers = [(key, value) for key, value in sorted(metrics.items()) if isinstance(value, int | float)]
    return " · ".join(f"{key} {_fmt(value)}" for key, value in numbers[:3]) or "—"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))


@admin.register(ModelVersion)
class ModelVersionAdmin(NoDeleteMixin, admin.ModelAdmin):
    """Read-only versions: champion, challenger and archive are actions through
    ``registry.versions``. A cheap page at any size: capped count, no facets, primary-key order."""

    list_display = ["label_display", "status", "source", "created", "alias_names", "snapshot_link", "metrics_display"]
    list_display_links = ["label_display"]
    list_filter = ["family", "status", SourceFilter]
    list_select_related = ["family", "snapshot__class_set"]
    paginator = RowCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    sortable_by = ()
    ordering = ["-pk"]
    search_fields = ["=number"]
    search_help_text = "A label (digits@4) or a version number."
    raw_id_fields = ["parent", "snapshot", "training_job", "policy", "incidents", "created_by"]
    fields = [
        "label_display",
        "family",
        "number",
        "status",
        "archived_reason",
        "source",
        "created",
        "created_by",
        "alias_names",
        "feature_dim",
        "classes",
        "metrics_pretty",
        "params_pretty",
        "min_memory_mb",
        "runtime",
        "bundle_key",
        "bundle_sha256",
        "bundle_size_display",
        "manifest_pretty",
        "lineage",
        "mlflow_run_id",
        "mlflow_model_version",
    ]
    readonly_fields = fields
    actions = ["make_champion", "make_challenger", "archive"]

    def get_queryset(self, request):
        aliases = Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id").order_by("name"))
        return super().get_queryset(request).prefetch_related(aliases)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        parsed = versions.parse_label(term)
        if parsed is not None:
            return queryset.filter(family__name=parsed[0], number=parsed[1]), False
        return (queryset.filter(number=int(term)) if term.isdigit() else queryset.none()), False

    def has_add_permission(self, request):
        return False  # versions come from training jobs and the shipped reference

    def has_change_permission(self, request, obj=None):
        return False

    def has_promote_permission(self, request):
        return request.user.has_perm(CHANGE_VERSION)

    @admin.action(description="Make the selected version the champion", permissions=["promote"])
    def make_champion(self, request, queryset):
        self._move(request, queryset, CHAMPION)

    @admin.action(description="Make the selected version the challenger", permissions=["promote"])
    def make_challenger(self, request, queryset):
        self._move(request, queryset, CHALLENGER)

    def _move(self, request, queryset, alias: str) -> None:
        chosen = list(queryset.select_related("family")[:2])
        if len(chosen) != 1:
            self.message_user(request, f"Select exactly one version to make {alias}.", messages.ERROR)
            return
        version = chosen[0]
        try:
            event = versions.move_alias(
                version.family, alias, version, by=request.user, reason=f"admin: {request.user}"
            )
        except ValueError as exc:
            self.message_user(request, f"{version.label} cannot be {alias}: {exc}.", messages.ERROR)
            return
        if event is None:
            self.message_user(request, f"{version.label} already is {alias}.", messages.WARNING)
        else:
            self.message_user(request, f"{version.label} is now {alias}.", messages.SUCCESS)

    @admin.action(description="Archive the selected versions", permissions=["promote"])
    def archive(self, request, queryset):
        archived = 0
        for version in queryset.select_related("family"):
            try:
                versions.archive_version(version, f"archived in the admin by {request.user}")
            except ValueError as exc:
                self.message_user(request, f"{version.label} was not archived: {exc}.", messages.ERROR)
                continue
            archived += 1
        if archived:
            self.message_user(request, f"Archived {archived} version(s).", messages.SUCCESS)

    @admin.display(description="version", ordering="-pk")
    def label_display(self, obj):
        return obj.label

    @admin.display(description="aliases")
    def alias_names(self, obj):
        return ", ".join(alias.name for alias in obj.aliases.all()) or "—"

    @admin.display(description="snapshot")
    def snapshot_link(self, obj):
        if obj.snapshot_id is None:
            return "—"
        return admin_change_link(DatasetSnapshot, obj.snapshot_id, str(obj.snapshot))

    @admin.display(description="metrics")
    def metrics_display(self, obj):
        return metrics_summary(obj.metrics)

    metrics_pretty = json_display("metrics", "metrics")

    params_pretty = json_display("params", "params")

    manifest_pretty = json_display("manifest", "manifest")

    @admin.display(description="bundle size")
    def bundle_size_display(self, obj):
        return filesizeformat(obj.bundle_size)

    @admin.display(description="lineage")
    def lineage(self, obj):
        rows = [
            ("parent", version_link(obj.parent)),
            ("snapshot", self.snapshot_link(obj)),
            ("training job", admin_change_link(TrainingJob, obj.training_job_id, f"job {obj.training_job_id}")),
            ("policy", admin_change_link(RetrainingPolicy, obj.policy_id, str(obj.policy or ""))),
            ("incidents", ", ".join(str(pk) for pk in obj.incidents.values_list("pk", flat=True)) or "—"),
            ("children", changelist_link(ModelVersion, "Versions trained from it", parent__id__exact=obj.pk)),
        ]
        return format_html("<dl>{}</dl>", format_html_join("", "<dt>{}</dt><dd>{}</dd>", rows))


@admin.register(Alias)
class AliasAdmin(NoDeleteMixin, ReadOnlyAdmin):
    """Where each alias points now; moves are version actions (the history is AliasEvent)."""

    list_display = ["family", "name", "version_display", "updated"]
    list_filter = ["family", "name"]
    list_select_related = ["family", "version__family"]

    @admin.display(description="version")
    def version_display(self, obj):
        return version_link(obj.version)


@admin.register(AliasEvent)
class AliasEventAdmin(NoDeleteMixin, ReadOnlyAdmin):
    """Append-only history of alias moves."""

    list_display = ["at", "family", "alias", "version_display", "previous_display", "by", "reason_excerpt"]
    list_filter = ["family", "alias"]
    list_select_related = ["family", "version__family", "previous__family", "by"]
    raw_id_fields = ["version", "previous", "by"]
    show_full_result_count = False

    @admin.display(description="version")
    def version_display(self, obj):
        return version_label(obj.version) if obj.version_id else "(removed)"

    @admin.display(description="previous")
    def previous_display(self, obj):
        return version_label(obj.previous)

    @admin.display(description="reason")
    def reason_excerpt(self, obj):
        return Truncator(obj.reason).chars(80)


# --- policies and jobs ------------------------------------------------------------------------


@admin.register(RetrainingPolicy)
class RetrainingPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "family",
        "enabled",
        "triggers",
        "strategy",
        "consecutive_failures",
        "breaker_open_until",
        "last_job_at",
    ]
    list_filter = ["enabled", "family", "strategy"]
    list_select_related = ["family"]
    search_fields = ["name"]
    readonly_fields = [
        "consecutive_failures",
        "breaker_open_until",
        "last_job_at",
        "last_checked_at",
        "created",
        "decision_now",
        "jobs_link",
    ]
    actions = ["run_now", "pause", "resume"]

    def has_manage_permission(self, request):
        return request.user.has_perm(CHANGE_POLICY)

    @admin.action(description="Run now (start a training job)", permissions=["manage"])
    def run_now(self, request, queryset):
        for policy in queryset.select_related("family"):
            try:
                job = policies.run_policy(policy, by=request.user, reason=f"admin: {request.user}")
            except policies.PolicyBusy as exc:
                self.message_user(request, f"Not started: {exc}.", messages.ERROR)
                continue
            self.message_user(request, f"{policy.name}: job {job.pk} queued.", messages.SUCCESS)

    @admin.action(description="Pause (stop triggering)", permissions=["manage"])
    def pause(self, request, queryset):
        self._set_enabled(request, queryset, False)

    @admin.action(description="Resume (and close an open circuit breaker)", permissions=["manage"])
    def resume(self, request, queryset):
        self._set_enabled(request, queryset, True)

    def _set_enabled(self, request, queryset, enabled: bool) -> None:
        for policy in queryset:
            policies.set_enabled(policy, enabled)
        state = "resumed" if enabled else "paused"
        self.message_user(request, f"{queryset.count()} policy(ies) {state}.", messages.SUCCESS)

    @admin.display(description="triggers")
    def triggers(self, obj):
        parts = []
        if obj.on_confirmed_drift:
            parts.append("confirmed drift")
        if obj.drift_share_threshold is not None:
            parts.append(f"drift share ≥ {obj.drift_share_threshold:g}")
        if obj.schedule_hours:
            parts.append(f"every {obj.schedule_hours} h")
        return ", ".join(parts) or "manual only"

    @admin.display(description="if checked now")
    def decision_now(self, obj):
        if obj.pk is None:
            return "—"
        decision = policies.evaluate_policy(obj)
        verdict = f"would start a job ({decision.trigger})" if decision.trigger else "would not start a job"
        return f"{verdict}: {decision.reason}"

    @admin.display(description="jobs")
    def jobs_link(self, obj):
        if obj.pk is None:
            return "—"
        return changelist_link(TrainingJob, "Jobs of this policy", policy__id__exact=obj.pk)


@admin.register(TrainingJob)
class TrainingJobAdmin(NoDeleteMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "family",
        "policy",
        "status",
        "trigger",
        "progress_display",
        "stage",
        "version_display",
        "created",
        "finished_at",
        "reason_excerpt",
    ]
    list_filter = ["status", "family", "trigger"]
    list_select_related = ["family", "policy", "produced_version__family"]
    raw_id_fields = ["policy", "snapshot", "base_version", "requested_by", "incidents"]
    show_full_result_count = False
    fields = [
        "family",
        "policy",
        "status",
        "trigger",
        "progress_display",
        "stage",
        "reason",
        "error_display",
        "evidence_pretty",
        "snapshot",
        "base_version",
        "version_display",
        "params_pretty",
        "result_pretty",
        "attempts",
        "claim",
        "mlflow_run_id",
        "requested_by",
        "created",
        "started_at",
        "finished_at",
        "heartbeat_at",
    ]
    readonly_fields = fields
    actions = ["cancel_queued"]

    def has_cancel_permission(self, request):
        return request.user.has_perm(CHANGE_JOB)

    @admin.action(description="Cancel queued jobs", permissions=["cancel"])
    def cancel_queued(self, request, queryset):
        cancelled = sum(jobs.cancel(job) for job in queryset)
        skipped = len(queryset) - cancelled
        self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} job(s) were not queued and keep running or stay as they are.")

    @admin.display(description="progress", ordering="progress")
    def progress_display(self, obj):
        return f"{obj.progress:.0%}"

    @admin.display(description="version")
    def version_display(self, obj):
        return version_link(getattr(obj, "produced_version", None))

    @admin.display(description="reason")
    def reason_excerpt(self, obj):
        return Truncator(obj.reason or obj.error).chars(80)

    @admin.display(description="error")
    def error_display(self, obj):
        return format_html("<pre>{}</pre>", obj.error) if obj.error else "—"

    evidence_pretty = json_display("evidence", "evidence")

    params_pretty = json_display("params", "params")

    result_pretty = json_display("result", "result")


# --- rollouts ---------------------------------------------------------------------------------


class FirstDecisionsFormSet(BaseInlineFormSet):
    """A rollout's newest decisions; the rest are a link away."""

    def get_queryset(self):
        if not hasattr(self, "_newest"):  # the formset asks once per form: slice once
            self._newest = super().get_queryset().select_related("by").order_by("-at", "-id")[:DECISIONS_SHOWN]
        return self._newest


class DecisionInline(admin.TabularInline):
    model = RolloutDecision
    formset = FirstDecisionsFormSet
    fields = ["at", "action", "phase", "automatic", "by", "reason", "evidence_pretty"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = f"decisions (the newest {DECISIONS_SHOWN})"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    evidence_pretty = json_display("evidence", "evidence")


class StartRolloutForm(forms.ModelForm):
    """The add form: checks what ``start_rollout`` would refuse, so a refusal is a form error."""

    class Meta:
        model = Rollout
        fields = [
            "version",
            "name",
            "target_kind",
            "target_groups",
            "target_devices",
            "target_filter",
            "phases",
            "gates",
            "require_approval",
            "auto_advance",
            "auto_rollback",
            "download_timeout_minutes",
        ]

    def clean(self):
        from registry import rollouts

        data = super().clean()
        version, kind = data.get("version"), data.get("target_kind")
        if version is not None:
            live = Rollout.objects.filter(family=version.family_id, status__in=LIVE_ROLLOUT_STATUSES).first()
            if live is not None:
                self.add_error("version", f"{version.family.name} already has a live rollout ({live}).")
            if version.status == "archived":
                self.add_error("version", f"{version.label} is archived.")
        if kind == TargetKind.GROUPS and not data.get("target_groups"):
            self.add_error("target_groups", "A rollout to groups needs at least one group.")
        if kind == TargetKind.DEVICES and not data.get("target_devices"):
            self.add_error("target_devices", "A rollout to a list of devices needs at least one device.")
        try:
            rollouts.validate_gates(data.get("gates") or {})
            if kind == TargetKind.FILTER:
                rollouts.validate_filter(data.get("target_filter") or {})
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                self.add_error(name, errors)
        return data


class StartRefused(Exception):
    pass


@admin.register(Rollout)
class RolloutAdmin(NoDeleteMixin, admin.ModelAdmin):
    list_display = ["__str__", "family", "version_display", "status", "phase_display", "target_kind", "created"]
    list_filter = ["status", "family"]
    list_select_related = ["family", "version__family"]
    raw_id_fields = ["version", "target_devices"]
    filter_horizontal = ["target_groups"]
    show_full_result_count = False
    inlines = [DecisionInline]
    actions = ["pause", "resume", "approve", "advance", "force_advance", "rollback", "cancel"]
    summary_fields = [
        "__str__",
        "family",
        "version_display",
        "baseline_display",
        "status",
        "reason",
        "phase_display",
        "phase_started_at",
        "summary_display",
        "assignments_link",
        "target_display",
        "phases",
        "gates_pretty",
        "require_approval",
        "auto_advance",
        "auto_rollback",
        "download_timeout_minutes",
        "created",
        "created_by",
        "finished_at",
    ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = StartRolloutForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return self.summary_fields if obj is not None else StartRolloutForm.Meta.fields

    def get_readonly_fields(self, request, obj=None):
        return self.summary_fields if obj is not None else []

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def has_change_permission(self, request, obj=None):
        return False  # a rollout changes through its actions only

    def has_manage_permission(self, request):
        return request.user.has_perm(CHANGE_ROLLOUT)

    # --- starting: the add form calls the service instead of saving the row ---

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except StartRefused as exc:  # a race past the form's checks (another rollout started meanwhile)
            self.message_user(request, f"The rollout was not started: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        from registry import rollouts

        data = form.cleaned_data
        try:
            started = rollouts.start_rollout(
                data["version"],
                target_kind=data["target_kind"],
                groups=data["target_groups"],
                devices=data["target_devices"],
                target_filter=data["target_filter"],
                phases=data["phases"],
                gates=data["gates"] or {},
                require_approval=data["require_approval"],
                auto_advance=data["auto_advance"],
                auto_rollback=data["auto_rollback"],
                name=data["name"],
                by=request.user,
                download_timeout_minutes=data["download_timeout_minutes"],
            )
        except (rollouts.RolloutError, ValidationError) as exc:
            raise StartRefused("; ".join(getattr(exc, "messages", [str(exc)]))) from exc
        obj.pk = started.pk  # the log entry and the redirect name the started row

    def save_related(self, request, form, formsets, change):
        pass  # start_rollout stored the target

    # --- actions ---

    def _act(self, request, queryset, verb: str, call) -> None:
        from registry.rollouts import RolloutError

        for rollout in queryset.select_related("family", "version__family"):
            try:
                call(rollout)
            except RolloutError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.message_user(request, f"{rollout}: {verb} ({rollout.get_status_display().lower()}).", messages.SUCCESS)

    @admin.action(description="Pause", permissions=["manage"])
    def pause(self, request, queryset):
        from registry import rollouts

        self._act(
            request, queryset, "paused", lambda r: rollouts.pause(r, by=request.user, reason="Paused in the admin.")
        )

    @admin.action(description="Resume", permissions=["manage"])
    def resume(self, request, queryset):
        from registry import rollouts

        self._act(request, queryset, "resumed", lambda r: rollouts.resume(r, by=request.user))

    @admin.action(description="Approve (start the first phase)", permissions=["manage"])
    def approve(self, request, queryset):
        from registry import rollouts

        self._act(request, queryset, "approved", lambda r: rollouts.approve(r, by=request.user))

    @admin.action(description="Advance to the next phase (gates must pass)", permissions=["manage"])
    def advance(self, request, queryset):
        from registry import rollouts

        self._act(request, queryset, "advanced", lambda r: rollouts.advance(r, by=request.user))

    @admin.action(description="Advance to the next phase even if the gates fail", permissions=["manage"])
    def force_advance(self, request, queryset):
        from registry import rollouts

        self._act(request, queryset, "advanced", lambda r: rollouts.advance(r, by=request.user, force=True))

    @admin.action(description="Roll back the fleet to the baseline", permissions=["manage"])
    def rollback(self, request, queryset):
        from registry import rollouts

        reason = f"Rolled back in the admin by {request.user}."
        self._act(request, queryset, "rolled back", lambda r: rollouts.rollback(r, by=request.user, reason=reason))

    @admin.action(description="Cancel", permissions=["manage"])
    def cancel(self, request, queryset):
        from registry import rollouts

        reason = f"Cancelled in the admin by {request.user}."
        self._act(request, queryset, "cancelled", lambda r: rollouts.cancel(r, by=request.user, reason=reason))

    # --- display ---

    @admin.display(description="version")
    def version_display(self, obj):
        return version_link(obj.version)

    @admin.display(description="baseline")
    def baseline_display(self, obj):
        return version_link(obj.baseline)

    @admin.display(description="phase")
    def phase_display(self, obj):
        phases = obj.phases if isinstance(obj.phases, list) else []
        share = phases[obj.phase] if obj.phase < len(phases) else None
        return f"{obj.phase + 1} of {len(phases)}" + (f" ({share:.0%})" if share is not None else "")

    gates_pretty = json_display("gates", "gates")

    @admin.display(description="target")
    def target_display(self, obj):
        from registry.rollouts import describe_target

        return pretty_json(describe_target(obj))

    @admin.display(description="assignments")
    def assignments_link(self, obj):
        return changelist_link(RolloutAssignment, "All assignments of this rollout", rollout__id__exact=obj.pk)

    @admin.display(description="summary")
    def summary_display(self, obj):
        from registry.rollouts import rollout_summary

        summary = rollout_summary(obj)
        states = list(summary["totals"])
        head = format_html_join("", "<th>{}</th>", ((state,) for state in ["phase", *states]))
        rows = [
            [f"{i + 1} ({phase['share']:.0%})", *(phase["counts"].get(state, 0) for state in states)]
            for i, phase in enumerate(summary["phases"])
        ]
        rows.append(["all", *(summary["totals"][state] for state in states)])
        body = format_html_join(
            "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
        )
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


@admin.register(RolloutAssignment)
class RolloutAssignmentAdmin(BigTableAdmin):
    """One row per device and rollout: read-only, capped count, filtered by rollout and state."""

    list_display = ["assigned_at", "device_link", "rollout", "version_display", "phase", "state", "reason_excerpt"]
    list_display_links = ["assigned_at"]
    list_filter = ["state", "rollout", DeviceFilter]
    list_select_related = ["device", "rollout__version__family", "version__family"]
    raw_id_fields = ["rollout", "device", "version"]
    # (rollout, state) and (device, -assigned_at) serve these once filtered.
    ordering_filters = ("device",)
    filtered_ordering = ["-assigned_at"]

    @admin.display(description="version")
    def version_display(self, obj):
        return obj.version.label

    @admin.display(description="reason")
    def reason_excerpt(self, obj):
        return Truncator(obj.reason).chars(80)


@admin.register(RolloutDecision)
class RolloutDecisionAdmin(NoDeleteMixin, ReadOnlyAdmin):
    list_display = ["at", "rollout", "action", "phase", "automatic", "by", "reason_excerpt"]
    list_filter = ["action", "automatic"]
    list_select_related = ["rollout__version__family", "by"]
    raw_id_fields = ["rollout", "by"]
    paginator = RowCountPaginator
    show_full_result_count = False
    fields = ["rollout", "action", "phase", "automatic", "by", "at", "reason", "evidence_pretty"]
    readonly_fields = fields

    @admin.display(description="reason")
    def reason_excerpt(self, obj):
        return Truncator(obj.reason).chars(80)

    evidence_pretty = json_display("evidence", "evidence")
