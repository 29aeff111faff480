"""Drift events and their quarantined samples: read-only and safe on large tables, with the
samples' images as lazily loaded thumbnails from the stored-file view."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce, Length
from django.forms.models import BaseInlineFormSet
from django.utils.html import format_html, format_html_join

from devices.admin import (
    BigTableAdmin,
    DeviceFilter,
    ReadOnlyAdmin,
    RecentValuesFilter,
    admin_change_link,
    changelist_link,
    feature_count,
    pretty_json,
    stored_file_url,
    thumbnail,
)
from devices.models import Package
from drift import reports, verdicts
from drift.alerts import services as alert_services
from drift.charts import histogram_svg
from drift.models import (
    Alert,
    AlertRule,
    Channel,
    DriftEvent,
    DriftReport,
    DriftSample,
    DriftStatus,
    Incident,
    Notification,
    ReportPolicy,
    Verdict,
)

SAMPLES_SHOWN = 50
IMAGES = "drift_images"


class ExactClientIdSearch:
    """Search by the record's id on the device only (BigTableAdmin.exact_id_field)."""

    search_fields = ["=client_id"]
    search_help_text = "The record's id on the device (exact UUID)."
    exact_id_field = "client_id"


class DetectorFilter(RecentValuesFilter):
    title = "detector"
    parameter_name = "detector"


class ModelVersionFilter(RecentValuesFilter):
    title = "model version"
    parameter_name = "model_version"


class LabelFilter(RecentValuesFilter):
    title = "label"
    parameter_name = "label"


class FirstSamplesFormSet(BaseInlineFormSet):
    """An event's first SAMPLES_SHOWN samples; the rest are a link away."""

    def get_queryset(self):
        # Sliced once and kept: the formset asks for its queryset once per form.
        if not hasattr(self, "_first_samples"):
            self._first_samples = super().get_queryset()[:SAMPLES_SHOWN]
        return self._first_samples


class VerdictInline(admin.TabularInline):
    """The event's decisions, oldest first (append-only: written by drift.verdicts)."""

    model = Verdict
    fields = ["decided_at", "previous_status", "status", "decided_by", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "verdict history"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class DriftSampleInline(admin.TabularInline):
    model = DriftSample
    formset = FirstSamplesFormSet
    fields = ["image", "created", "label", "confidence", "model_version", "client_id"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"samples (the first {SAMPLES_SHOWN})"

    def get_queryset(self, request):
        return super().get_queryset(request).defer("features", "payload")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="image")
    def image(self, obj):
        return thumbnail(IMAGES, obj.image_key)


@admin.register(DriftEvent)
class DriftEventAdmin(ExactClientIdSearch, BigTableAdmin):
    list_display = ["created", "device_link", "detector", "model_version", "status", "sample_count", "received_at"]
    list_display_links = ["created"]
    list_filter = ["status", DeviceFilter, DetectorFilter, ModelVersionFilter]
    actions = ["confirm", "reject", "resolve"]
    list_select_related = ["device"]
    raw_id_fields = ["device", "package"]
    sortable_by = ["created", "sample_count"]
    fields = [
        "client_id",
        "device_link",
        "detector",
        "model_version",
        "created",
        "received_at",
        "sample_count",
        "all_samples",
        "package_link",
        "status",
        "decided_by",
        "decided_at",
        "decision_note",
        "acknowledged_status",
        "acknowledged_at",
        "payload_display",
    ]
    readonly_fields = fields
    inlines = [VerdictInline, DriftSampleInline]

    # The verdict goes back to the device in its next sync (drift.verdicts).
    @admin.action(description="Confirm the drift (device keeps its samples; samples go to labeling)")
    def confirm(self, request, queryset):
        self._decide(request, queryset, DriftStatus.CONFIRMED)

    @admin.action(description="Reject as a false alarm (device releases its quarantined samples)")
    def reject(self, request, queryset):
        self._decide(request, queryset, DriftStatus.REJECTED)

    @admin.action(description="Mark confirmed drift as resolved")
    def resolve(self, request, queryset):
        self._decide(request, queryset, DriftStatus.RESOLVED)

    def _decide(self, request, queryset, status):
        changed = verdicts.decide(queryset, status, by=request.user, note=f"via the admin by {request.user}")
        skipped = queryset.count() - changed
        self.message_user(request, f"{changed} event(s) now {status}.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} event(s) could not move to {status}.", messages.WARNING)

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("drift.change_driftevent"):
            for name in ("confirm", "reject", "resolve"):
                actions.pop(name, None)
        return actions

    def get_queryset(self, request):
        # A correlated count per row of the page (the samples' event index), not a GROUP BY
        # over the joined tables.
        samples = DriftSample.objects.filter(event=OuterRef("pk")).order_by().values("event")
        count = Subquery(samples.annotate(n=Count("pk")).values("n"))
        return super().get_queryset(request).annotate(sample_count=Coalesce(count, 0))

    @admin.display(description="samples", ordering="sample_count")
    def sample_count(self, obj):
        return obj.sample_count

    @admin.display(description="all samples")
    def all_samples(self, obj):
        return changelist_link(DriftSample, f"All {obj.sample_count} sample(s)", event__id__exact=obj.pk)

    @admin.display(description="package")
    def package_link(self, obj):
        return admin_change_link(Package, obj.package_id, f"Package {obj.package_id}")

    @admin.display(description="payload")
    def payload_display(self, obj):
        return pretty_json(obj.payload)


@admin.register(DriftSample)
class DriftSampleAdmin(ExactClientIdSearch, BigTableAdmin):
    list_display = [
        "created",
        "device_link",
        "image",
        "label",
        "confidence",
        "model_version",
        "event_link",
        "attachment_count",
    ]
    list_display_links = ["created"]
    list_filter = [DeviceFilter, LabelFilter, ModelVersionFilter, ("event", admin.EmptyFieldListFilter)]
    list_select_related = ["device"]
    raw_id_fields = ["device", "event", "package"]
    sortable_by = ["created"]
    fields = [
        "client_id",
        "device_link",
        "event_link",
        "event_client_id",
        "created",
        "received_at",
        "model_version",
        "label",
        "confidence",
        "image_preview",
        "attachment_links",
        "feature_values",
        "package_link",
        "payload_display",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("features").annotate(feature_bytes=Length("features"))

    @admin.display(description="image")
    def image(self, obj):
        return thumbnail(IMAGES, obj.image_key)

    @admin.display(description="image")
    def image_preview(self, obj):
        return thumbnail(IMAGES, obj.image_key, size=128)

    @admin.display(description="event")
    def event_link(self, obj):
        return admin_change_link(DriftEvent, obj.event_id, f"Event {obj.event_id}") if obj.event_id else "—"

    @admin.display(description="attachments")
    def attachment_count(self, obj):
        return len(obj.attachments or [])

    @admin.display(description="attachments")
    def attachment_links(self, obj):
        attachments = [item for item in obj.attachments or [] if isinstance(item, dict) and item.get("key")]
        if not attachments:
            return "—"
        rows = ((stored_file_url(IMAGES, item["key"]), item.get("name") or item["key"]) for item in attachments)
        return format_html("<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a></li>', rows))

    @admin.display(description="features")
    def feature_values(self, obj):
        return feature_count(obj.feature_bytes)

    @admin.display(description="package")
    def package_link(self, obj):
        return admin_change_link(Package, obj.package_id, f"Package {obj.package_id}")

    @admin.display(description="payload")
    def payload_display(self, obj):
        return pretty_json(obj.payload)


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    """Incidents as triage classified them; the evidence says why (drift.triage)."""

    list_display = ["started_at", "kind", "slice_display", "device_count", "event_count", "ended_at", "rule"]
    list_filter = ["kind", "slice_attribute"]
    fields = [
        "kind",
        "slice_display",
        "started_at",
        "ended_at",
        "device_count",
        "event_count",
        "rule",
        "all_events",
        "evidence_display",
    ]
    readonly_fields = fields

    @admin.display(description="slice")
    def slice_display(self, obj):
        return f"{obj.slice_attribute} = {obj.slice_value}" if obj.slice_attribute else "—"

    @admin.display(description="why")
    def rule(self, obj):
        return obj.evidence.get("rule", "")

    @admin.display(description="events")
    def all_events(self, obj):
        return changelist_link(DriftEvent, f"All {obj.event_count} event(s)", incident__id__exact=obj.pk)

    @admin.display(description="evidence")
    def evidence_display(self, obj):
        return pretty_json(obj.evidence)


@admin.register(ReportPolicy)
class ReportPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "scope", "scope_value", "current_hours", "interval_minutes", "enabled", "last_run_at"]
    list_filter = ["enabled", "scope"]
    actions = ["run_now"]

    @admin.action(description="Run a report now")
    def run_now(self, request, queryset):
        for policy in queryset:
            reports.request_report(policy, by=request.user)
        self.message_user(request, f"{queryset.count()} report(s) queued.", messages.SUCCESS)


@admin.register(DriftReport)
class DriftReportAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "scope", "scope_value", "status", "dataset_drift", "drifted_share", "current_rows"]
    list_filter = ["status", "scope", "dataset_drift"]
    list_select_related = ["policy"]
    fields = [
        "policy",
        "scope",
        "scope_value",
        "reference_start",
        "reference_end",
        "current_start",
        "current_end",
        "reference_rows",
        "current_rows",
        "status",
        "error",
        "dataset_drift",
        "drifted_share",
        "features_table",
    ]
    readonly_fields = fields

    @admin.display(description="drifted features")
    def drifted_share(self, obj):
        return "" if obj.share_of_drifted_features is None else f"{obj.share_of_drifted_features:.0%}"

    @admin.display(description="features")
    def features_table(self, obj):
        columns = (obj.results or {}).get("columns", {})
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    name,
                    column["test"],
                    column["drift_score"],
                    column["threshold"],
                    "drift" if column["drift_detected"] else "—",
                    histogram_svg(column["histogram"]),
                )
                for name, column in columns.items()
            ),
        )
        header = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            *("feature", "test", "score", "threshold", "drift", "reference (grey) vs current (orange)"),
        )
        return format_html("<table>{}{}</table>", header, rows)


# --- Alerts ------------------------------------------------------------------------------------


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "scope", "scope_value", "action_interval_minutes", "enabled"]
    list_filter = ["enabled", "kind", "scope"]
    filter_horizontal = ["channels"]


class ChannelForm(forms.ModelForm):
    """The secret is write-only: never rendered back; left empty, the stored one is kept."""

    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhook signing secret. Leave empty to keep the current one.",
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "secret", "enabled"]

    def clean_secret(self):
        return self.cleaned_data["secret"] or (self.instance.secret if self.instance.pk else "")


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ["name", "kind", "target", "enabled"]
    list_filter = ["kind", "enabled"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["last_fired_at", "status", "rule", "subject", "flapping", "last_notified_at", "message"]
    list_display_links = ["last_fired_at"]
    list_filter = ["status", "flapping", "rule"]
    list_select_related = ["rule"]
    actions = ["acknowledge", "resolve"]
    fields = [
        "rule",
        "subject",
        "status",
        "message",
        "first_fired_at",
        "last_fired_at",
        "last_true_at",
        "last_notified_at",
        "acknowledged_by",
        "acknowledged_at",
        "resolved_at",
        "flapping",
        "transitions",
        "changed_at",
        "details_display",
    ]
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("drift.change_alert"):
            for name in ("acknowledge", "resolve"):
                actions.pop(name, None)
        return actions

    @admin.action(description="Acknowledge (stop notifying until it resolves)")
    def acknowledge(self, request, queryset):
        changed = alert_services.acknowledge(queryset, by=request.user)
        self.message_user(request, f"{changed} alert(s) acknowledged.", messages.SUCCESS)

    @admin.action(description="Resolve now")
    def resolve(self, request, queryset):
        changed = alert_services.resolve(queryset, by=request.user)
        self.message_user(request, f"{changed} alert(s) resolved.", messages.SUCCESS)

    @admin.display(description="details")
    def details_display(self, obj):
        return pretty_json(obj.details)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ["due_at", "alert", "channel", "status", "attempts", "sent_at", "last_error"]
    list_filter = ["status", "channel"]
    list_select_related = ["alert__rule", "channel"]
    raw_id_fields = ["alert"]
    fields = [
        "alert",
        "channel",
        "due_at",
        "status",
        "attempts",
        "delivery_id",
        "claimed_at",
        "next_attempt_at",
        "sent_at",
        "last_error",
        "attempt_log_display",
    ]
    readonly_fields = fields
    show_full_result_count = False

    @admin.display(description="attempts (each)")
    def attempt_log_display(self, obj):
        return pretty_json(obj.attempt_log)
