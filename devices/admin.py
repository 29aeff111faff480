from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone

from devices import services
from devices.models import Device, DeviceCredential, DeviceGroup, DeviceTag, EnrollmentToken, Telemetry
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
    ]
    autocomplete_fields = ["group"]
    filter_horizontal = ["tags"]
    inlines = [CredentialInline]
    actions = ["rotate_token", "revoke_tokens", "move_to_group"]

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


@admin.register(Telemetry)
class TelemetryAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
