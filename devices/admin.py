"""Fleet admin, and the ingest tables devices fill (predictions, packages and what they hold).

The ingest tables grow without bound, so their pages (``BigTableAdmin``) never count the whole
table, never list the distinct values of an unindexed column in a sidebar, order only by what an
index serves, and fetch what a row shows in the page query itself. Stored files open through the
``stored-file`` view, which checks the operator's permission for each area.
"""

from __future__ import annotations

import json
import operator
import uuid
from functools import reduce
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db import connection
from django.db.models import DurationField, ExpressionWrapper, F, OuterRef, Q, Subquery
from django.db.models.functions import Length
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from devices import services
from devices.ingest import processing
from devices.models import (
    ConfidenceBand,
    Device,
    DeviceCredential,
    DeviceGroup,
    DeviceTag,
    EnrollmentToken,
    OperationalLog,
    Package,
    PackageStatus,
    PredictionImage,
    PredictionLog,
    StateSnapshot,
    Telemetry,
    TelemetryBaseline,
)
from sphere.admin_paginator import BoundedCountPaginator


class CredentialInline(admin.TabularInline):
    model = DeviceCredential
    fields = ["prefix", "created_at", "created_by", "revoked_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


class MoveToGroupForm(forms.Form):
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.all(), required=False, empty_label="(no group)")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "group", "last_seen_at", "hardware", "client_version", "model_version"]
    list_filter = ["status", "group", "tags"]
    search_fields = ["name", "=id", "hardware", "location"]
    list_select_related = ["group"]
    show_full_result_count = False
    readonly_fields = [
        "id",
        "status",
        "last_seen_at",
        "late_at",
        "offline_at",
        "client_version",
        "model_version",
        "last_telemetry",
        "enrollment",
        "created_at",
        "records",
    ]
    autocomplete_fields = ["group"]
    filter_horizontal = ["tags"]
    inlines = [CredentialInline]
    actions = ["rotate_token", "revoke_tokens", "move_to_group"]

    @admin.display(description="Records")
    def records(self, obj):
        if obj._state.adding:
            return "—"
        links = [
            changelist_link(model, text, **{DeviceFilter.parameter_name: obj.pk}) for model, text in DEVICE_RECORDS
        ]
        links.append(changelist_link(Telemetry, "Telemetry", q=obj.pk))
        return format_html_join(" · ", "{}", ((link,) for link in links))

    @admin.action(description="Rotate token (shows each new token once)", permissions=["change"])
    def rotate_token(self, request, queryset):
        issued = [(device, services.issue_credential(device, by=request.user)) for device in queryset]
        context = {**self.admin_site.each_context(request), "title": "New device tokens", "issued": issued}
        return TemplateResponse(request, "admin/devices/device/tokens_once.html", context)

    @admin.action(description="Revoke tokens", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        revoked = sum(services.revoke_credentials(device) for device in queryset)
        self.message_user(request, f"Revoked {revoked} token(s) on {queryset.count()} device(s).", messages.SUCCESS)

    @admin.action(description="Move to group…", permissions=["change"])
    def move_to_group(self, request, queryset):
        form = MoveToGroupForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            moved = services.move_to_group(queryset.values_list("pk", flat=True), form.cleaned_data["group"])
            self.message_user(request, f"Moved {moved} device(s).", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Move devices to a group",
            "form": form,
            "devices": queryset,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/devices/device/move_to_group.html", context)


@admin.register(DeviceGroup)
class DeviceGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "heartbeat_period_s", "grace_s", "created_at"]
    search_fields = ["name"]


@admin.register(DeviceTag)
class DeviceTagAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "prefix", "use_count", "max_uses", "expires_at", "revoked_at"]
    list_select_related = ["group"]
    readonly_fields = ["prefix", "use_count", "created_at", "created_by", "revoked_at"]
    fields = ["name", "group", "max_uses", "expires_at", *readonly_fields]
    autocomplete_fields = ["group"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, token = services.create_enrollment_token(
            name=obj.name, group=obj.group, max_uses=obj.max_uses, expires_at=obj.expires_at, by=request.user
        )
        obj.pk, obj.prefix, request._new_enrollment_token = created.pk, created.prefix, token

    def response_add(self, request, obj, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "title": "Enrollment token created",
            "enrollment": obj,
            "token": request._new_enrollment_token,
        }
        return TemplateResponse(request, "admin/devices/enrollmenttoken/token_once.html", context)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} enrollment token(s).", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """For rows only devices or the system write: operators read them, nobody adds or edits."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Telemetry)
class TelemetryAdmin(ReadOnlyAdmin):
    """Read-only, and safe on a table of billions: no full count, no per-row queries."""

    list_display = [
        "device",
        "received_at",
        "cpu_percent",
        "memory_percent",
        "temperature_c",
        "latency_p95_ms",
        "throughput_ips",
        "model_version",
    ]
    list_select_related = ["device"]
    raw_id_fields = ["device"]
    search_fields = ["=device__id"]
    show_full_result_count = False
    paginator = BoundedCountPaginator
    ordering = ["-received_at"]
    list_per_page = 100


# --- Helpers shared by the ingest admins (drift's too) ----------------------------------------


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def admin_change_link(model, pk, text) -> str:
    if pk is None:
        return "—"
    opts = model._meta
    return format_html(
        '<a href="{}">{}</a>', reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]), text
    )


def changelist_link(model, text: str, **params) -> str:
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(params), text)


def stored_file_url(area: str, key: str) -> str:
    return reverse("stored-file", args=[area, key])


def file_link(area: str, key: str, text: str | None = None) -> str:
    if not key:
        return "—"
    return format_html('<a href="{}">{}</a>', stored_file_url(area, key), text or key)


def thumbnail(area: str, key: str, *, size: int = 64) -> str:
    """A lazily loaded thumbnail (the stored-file view's ≤128 px PNG) linking to the full image."""
    if not key:
        return "—"
    url = stored_file_url(area, key)
    return format_html(
        '<a href="{}"><img src="{}?thumb=1" loading="lazy" alt="" style="max-width:{}px;max-height:{}px"></a>',
        url,
        url,
        size,
        size,
    )


def pretty_json(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def feature_count(feature_bytes: int | None) -> int | str:
    """float32 values in a vector whose byte length the page query annotated (it never loads the vector)."""
    return "—" if feature_bytes is None else feature_bytes // 4


class InputFilter(admin.SimpleListFilter):
    """A text box in the sidebar instead of a list of every value (there may be thousands)."""

    template = "admin/sphere/input_filter.html"
    placeholder = ""

    def lookups(self, request, model_admin):
        return ()

    def has_output(self):
        return True

    def choices(self, changelist):
        others = ((name, value) for name, values in changelist.filter_params.items() for value in values)
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": [(name, value) for name, value in others if name != self.parameter_name],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


class DeviceFilter(InputFilter):
    title = "device"
    parameter_name = "device"
    placeholder = "Device id, or exact name"

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        if not value:
            return queryset
        device_id = parse_uuid(value)
        return queryset.filter(device_id=device_id) if device_id else queryset.filter(device__name=value)


class RecentValuesFilter(admin.SimpleListFilter):
    """The values of ``parameter_name`` among the latest ``sample`` rows: a backwards walk of the
    primary key, cheap at any table size, where a DISTINCT over an unindexed column would read
    the whole table. Older values still filter through the query string."""

    sample = 1000
    limit = 30

    def lookups(self, request, model_admin):
        recent = model_admin.model._default_manager.order_by("-pk").values_list(self.parameter_name, flat=True)
        values = sorted(set(recent[: self.sample]))[: self.limit]
        if self.value() is not None and self.value() not in values:
            values.append(self.value())
        return [(value, value or "(blank)") for value in values]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.parameter_name: self.value()})


class RowCountPaginator(BoundedCountPaginator):
    """The capped count over bare primary keys: the page's annotations (an image per row, a
    sample count) and its ordering would otherwise be computed for every counted row."""

    @cached_property
    def count(self):
        return self.object_list.values("pk").order_by()[: self.cap].count()


class BigTableAdmin(ReadOnlyAdmin):
    """Read-only, and safe on a table of billions: a capped count, no full count, no facet
    counts, no per-row queries. Rows come only from devices; superusers may delete."""

    paginator = RowCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    sortable_by = ()
    # Orderings an index serves: the primary key on the whole table, ``filtered_ordering`` (e.g.
    # an index on (device, -created)) once one of ``ordering_filters`` narrows the rows.
    ordering_filters: tuple[str, ...] = ("device",)
    filtered_ordering: list[str] | None = ["-created"]
    # Search is an exact UUID on this field only: any other search would scan the table.
    exact_id_field: str | None = None

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term or self.exact_id_field is None:
            return super().get_search_results(request, queryset, search_term)
        record_id = parse_uuid(term)
        return (queryset.filter(**{self.exact_id_field: record_id}) if record_id else queryset.none()), False

    def get_ordering(self, request):
        if self.filtered_ordering and any(name.split("__")[0] in self.ordering_filters for name in request.GET):
            return self.filtered_ordering
        return ["-pk"]

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    @admin.display(description="device")
    def device_link(self, obj):
        return admin_change_link(Device, obj.device_id, obj.device.name)


# --- Packages ---------------------------------------------------------------------------------

STATUS_COLOURS = {
    PackageStatus.RECEIVED: "#6c757d",
    PackageStatus.PROCESSING: "#0d6efd",
    PackageStatus.PROCESSED: "#198754",
    PackageStatus.FAILED: "#dc3545",
}


@admin.register(Package)
class PackageAdmin(BigTableAdmin):
    list_display = [
        "received_at",
        "device_link",
        "kind",
        "status_badge",
        "size_display",
        "attempts",
        "processing_time",
        "error_excerpt",
    ]
    list_filter = ["status", "kind", DeviceFilter]
    list_select_related = ["device"]
    raw_id_fields = ["device"]
    search_fields = ["=package_id", "device__name"]
    search_help_text = "A package id (exact UUID), or part of a device name."
    sortable_by = ["received_at", "status_badge", "size_display", "attempts", "processing_time"]
    # (device, -received_at) and (status, received_at) serve these once filtered.
    ordering_filters = ("device", "status")
    filtered_ordering = ["-received_at"]
    fields = [
        "package_id",
        "device_link",
        "kind",
        "status_badge",
        "attempts",
        "received_at",
        "processing_started_at",
        "processed_at",
        "processing_time",
        "size_display",
        "sha256",
        "download",
        "summary_display",
        "error_display",
    ]
    readonly_fields = fields
    actions = ["reprocess"]

    def get_queryset(self, request):
        duration = ExpressionWrapper(F("processed_at") - F("processing_started_at"), output_field=DurationField())
        return super().get_queryset(request).annotate(processing_duration=duration)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        package_id = parse_uuid(term)
        if package_id:
            return queryset.filter(package_id=package_id), False
        return queryset.filter(device__name__icontains=term), False

    def has_reprocess_permission(self, request):
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description="Reprocess selected packages", permissions=["reprocess"])
    def reprocess(self, request, queryset):
        # Counted first: a queued package runs (and may finish) as soon as reprocess commits.
        busy = queryset.filter(status__in=[PackageStatus.RECEIVED, PackageStatus.PROCESSING]).count()
        queued = processing.reprocess(queryset)
        self.message_user(request, f"Queued {queued} package(s) for processing again.", messages.SUCCESS)
        if busy:
            self.message_user(request, f"Skipped {busy} package(s) still received or processing.", messages.WARNING)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html(
            '<span style="color:#fff;background:{};border-radius:3px;padding:1px 6px">{}</span>',
            STATUS_COLOURS.get(obj.status, "#6c757d"),
            obj.get_status_display(),
        )

    @admin.display(description="size", ordering="size")
    def size_display(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="processing (ms)", ordering="processing_duration")
    def processing_time(self, obj):
        return "—" if obj.processing_ms is None else f"{obj.processing_ms:.0f}"

    @admin.display(description="error")
    def error_excerpt(self, obj):
        return Truncator(obj.error).chars(80)

    @admin.display(description="error")
    def error_display(self, obj):
        return format_html("<pre>{}</pre>", obj.error) if obj.error else "—"

    @admin.display(description="summary")
    def summary_display(self, obj):
        return pretty_json(obj.summary) if obj.summary else "—"

    @admin.display(description="archive")
    def download(self, obj):
        return file_link("packages", obj.storage_key, f"Download ({filesizeformat(obj.size)})")


# --- Predictions ------------------------------------------------------------------------------

_DISTINCT_VERSIONS = """
WITH RECURSIVE versions(version, n) AS (
    SELECT CAST(MIN(model_version) AS TEXT), 1 FROM {table}
    UNION ALL
    SELECT CAST((SELECT model_version FROM {table} WHERE model_version > versions.version
                 ORDER BY model_version LIMIT 1) AS TEXT), n + 1
    FROM versions WHERE versions.version IS NOT NULL AND n < %s
)
SELECT version FROM versions WHERE version IS NOT NULL
"""


def distinct_model_versions(limit: int) -> list[str]:
    """The first ``limit`` model versions in the prediction log, by a loose index scan: one
    probe of the (model_version, -created) index per version, however many rows each has."""
    sql = _DISTINCT_VERSIONS.format(table=connection.ops.quote_name(PredictionLog._meta.db_table))
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [version for (version,) in cursor.fetchall()]


class ModelVersionFilter(admin.SimpleListFilter):
    title = "model version"
    parameter_name = "model_version"
    limit = 50

    def lookups(self, request, model_admin):
        versions = distinct_model_versions(self.limit)
        if self.value() is not None and self.value() not in versions:
            versions.append(self.value())
        return [(version, version or "(none)") for version in versions]

    def queryset(self, request, queryset):
        return queryset if self.value() is None else queryset.filter(model_version=self.value())


class LabelFilter(RecentValuesFilter):
    title = "label"
    parameter_name = "label"


def _band_q(band: str, low: float, high: float) -> Q:
    return {
        "uncertain": Q(confidence__range=(low, high)),
        "confident": Q(confidence__gt=high),
        "low": Q(confidence__lt=low),
    }[band]


def _model_q(name: str) -> Q:
    # uncertain_band() reads the model name as the part of the version before '@'.
    return Q(model_version=name) | Q(model_version__startswith=f"{name}@")


def confidence_band_q(band: str) -> Q:
    """Predictions in ``band`` relative to their own model's uncertain band: a ConfidenceBand
    override for the versions of its model, settings.UNCERTAIN_BAND for every other version."""
    overrides = list(ConfidenceBand.objects.exclude(model_name="").values_list("model_name", "low", "high"))
    default = _band_q(band, *settings.UNCERTAIN_BAND)
    if not overrides:
        return default
    overridden = reduce(operator.or_, (_model_q(name) for name, _, _ in overrides))
    per_model = reduce(operator.or_, (_model_q(name) & _band_q(band, low, high) for name, low, high in overrides))
    return (default & ~overridden) | per_model


class ConfidenceBandFilter(admin.SimpleListFilter):
    title = "confidence band"
    parameter_name = "band"

    def lookups(self, request, model_admin):
        low, high = settings.UNCERTAIN_BAND
        return [
            ("uncertain", f"Uncertain (in band; default {low:g}–{high:g})"),
            ("confident", "Confident (> high)"),
            ("low", "Low (< low)"),
        ]

    def queryset(self, request, queryset):
        if self.value() not in {"uncertain", "confident", "low"}:
            return queryset
        return queryset.filter(confidence_band_q(self.value()))


@admin.register(PredictionLog)
class PredictionLogAdmin(BigTableAdmin):
    list_display = [
        "created",
        "device_link",
        "model_version",
        "label",
        "confidence_display",
        "top_probabilities",
        "feature_values",
        "latency_ms",
        "image_thumbnail",
    ]
    list_display_links = ["created"]
    list_filter = [DeviceFilter, ModelVersionFilter, LabelFilter, ConfidenceBandFilter]
    list_select_related = ["device"]
    raw_id_fields = ["device"]
    search_fields = ["=client_id"]
    search_help_text = "A prediction's id on the device (exact UUID)."
    exact_id_field = "client_id"
    sortable_by = ["created"]
    # (device, -created) and (model_version, -created) serve these once filtered.
    ordering_filters = ("device", "model_version")
    fields = [
        "client_id",
        "device_link",
        "created",
        "received_at",
        "model_version",
        "label",
        "confidence_display",
        "probabilities_display",
        "latency_ms",
        "feature_values",
        "image",
        "image_preview",
        "image_stats",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        # The image of each row in the page query (one probe of its unique index), and the
        # feature vector's length instead of the vector: no per-row queries, no large blobs.
        image = PredictionImage.objects.filter(device=OuterRef("device"), prediction_id=OuterRef("client_id"))
        return (
            super()
            .get_queryset(request)
            .defer("features")
            .annotate(feature_bytes=Length("features"), image_key=Subquery(image.values("storage_key")[:1]))
        )

    @admin.display(description="confidence")
    def confidence_display(self, obj):
        return f"{obj.confidence:.3f}"

    @admin.display(description="top probabilities")
    def top_probabilities(self, obj):
        top = sorted((obj.probabilities or {}).items(), key=lambda item: -item[1])[:3]
        return ", ".join(f"{label} {probability:.2f}" for label, probability in top) or "—"

    @admin.display(description="probabilities")
    def probabilities_display(self, obj):
        return pretty_json(obj.probabilities) if obj.probabilities else "—"

    @admin.display(description="features")
    def feature_values(self, obj):
        return feature_count(obj.feature_bytes)

    @admin.display(description="image")
    def image_thumbnail(self, obj):
        return thumbnail("prediction_images", obj.image_key)

    @admin.display(description="stored image")
    def image_preview(self, obj):
        return thumbnail("prediction_images", obj.image_key, size=128)


@admin.register(ConfidenceBand)
class ConfidenceBandAdmin(admin.ModelAdmin):
    list_display = ["model_name", "low", "high"]
    search_fields = ["model_name"]


# --- What packages hold -----------------------------------------------------------------------


@admin.register(PredictionImage)
class PredictionImageAdmin(BigTableAdmin):
    list_display = ["received_at", "device_link", "prediction_id", "image_thumbnail", "dimensions", "size_display"]
    list_display_links = ["received_at"]
    list_filter = [DeviceFilter]
    list_select_related = ["device"]
    raw_id_fields = ["device", "package"]
    search_fields = ["=prediction_id"]
    search_help_text = "A prediction's id on the device (exact UUID)."
    exact_id_field = "prediction_id"
    filtered_ordering = None  # the (device, prediction_id) index filters; the page is small enough to sort
    fields = [
        "prediction_id",
        "prediction_link",
        "device_link",
        "image_preview",
        "content_type",
        "dimensions",
        "size_display",
        "storage_key",
        "package_link",
        "received_at",
    ]
    readonly_fields = fields

    @admin.display(description="image")
    def image_thumbnail(self, obj):
        return thumbnail("prediction_images", obj.storage_key)

    @admin.display(description="image")
    def image_preview(self, obj):
        return thumbnail("prediction_images", obj.storage_key, size=128)

    @admin.display(description="pixels")
    def dimensions(self, obj):
        return f"{obj.width}×{obj.height}"

    @admin.display(description="size")
    def size_display(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="prediction")
    def prediction_link(self, obj):
        return changelist_link(PredictionLog, "Open the prediction", device=obj.device_id, q=obj.prediction_id)

    @admin.display(description="package")
    def package_link(self, obj):
        return admin_change_link(Package, obj.package_id, f"Package {obj.package_id}")


@admin.register(OperationalLog)
class OperationalLogAdmin(BigTableAdmin):
    list_display = ["created", "device_link", "name", "lines", "size_display", "download"]
    list_display_links = ["created"]
    list_filter = [DeviceFilter]
    list_select_related = ["device"]
    raw_id_fields = ["device", "package"]
    search_fields = ["=client_id"]
    search_help_text = "The log chunk's id on the device (exact UUID)."
    exact_id_field = "client_id"
    sortable_by = ["created"]
    fields = ["client_id", "device_link", "created", "name", "lines", "size_display", "download", "package_link"]
    readonly_fields = fields

    @admin.display(description="size")
    def size_display(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="file")
    def download(self, obj):
        return file_link("oplogs", obj.storage_key, "Open")

    @admin.display(description="package")
    def package_link(self, obj):
        return admin_change_link(Package, obj.package_id, f"Package {obj.package_id}")


@admin.register(StateSnapshot)
class StateSnapshotAdmin(BigTableAdmin):
    list_display = ["created", "device_link", "client_id", "package_link"]
    list_display_links = ["created"]
    list_filter = [DeviceFilter]
    list_select_related = ["device"]
    raw_id_fields = ["device", "package"]
    sortable_by = ["created"]
    fields = ["client_id", "device_link", "created", "package_link", "state_display"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("state")  # may be large; loaded on the detail page only

    @admin.display(description="package")
    def package_link(self, obj):
        return admin_change_link(Package, obj.package_id, f"Package {obj.package_id}")

    @admin.display(description="state")
    def state_display(self, obj):
        return pretty_json(obj.state)


# Listed on a device's page, each filtered to the device.
DEVICE_RECORDS = (
    (PredictionLog, "Predictions"),
    (Package, "Packages"),
    (PredictionImage, "Prediction images"),
    (OperationalLog, "Operational logs"),
    (StateSnapshot, "State snapshots"),
)


@admin.register(TelemetryBaseline)
class TelemetryBaselineAdmin(ReadOnlyAdmin):
    """Devices against their own telemetry baseline (devices.health); anomalous ones first."""

    list_display = ["device", "anomalous", "anomaly_summary", "samples", "fitted_at", "checked_at"]
    list_filter = ["anomalous"]
    list_select_related = ["device"]
    ordering = ["-anomalous", "-checked_at"]
    fields = ["device", "anomalous", "anomalies_display", "statistics_display", "samples", "fitted_at", "checked_at"]
    readonly_fields = fields
    paginator = BoundedCountPaginator
    show_full_result_count = False

    @admin.display(description="departs on")
    def anomaly_summary(self, obj):
        return ", ".join(f"{metric} (z {found['z']})" for metric, found in obj.anomalies.items()) or "—"

    @admin.display(description="anomalies")
    def anomalies_display(self, obj):
        return pretty_json(obj.anomalies)

    @admin.display(description="baseline (median, MAD)")
    def statistics_display(self, obj):
        return pretty_json(obj.statistics)
