"""Labeling admin: class sets (editable), the queue's tasks and labels (read-only, big-table
safe), dataset snapshots and their items (read-only; created and exported by actions).

Tasks and labels grow with every prediction worth labeling, so their pages use the ingest
tables' ``BigTableAdmin``: a capped count, no facet counts, orderings an index serves, search
by exact key or id only. Snapshots are never edited here: "Create a snapshot" on class sets and
"Export" on snapshots queue tasks (``labeling.snapshots.request_snapshot``,
``labeling.export.request_export``); snapshot requests show how each build went.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html
from django.utils.text import Truncator

from devices.admin import (
    BigTableAdmin,
    ReadOnlyAdmin,
    RecentValuesFilter,
    admin_change_link,
    changelist_link,
    pretty_json,
    thumbnail,
)
from labeling import export, sources, tasks
from labeling.models import (
    ClassSet,
    DatasetSnapshot,
    ExportStatus,
    Label,
    LabelTask,
    SnapshotItem,
    SnapshotRequest,
    TaskStatus,
)
from labeling.snapshots import request_snapshot

SNAPSHOT_VIEW = "labeling.view_datasetsnapshot"
SNAPSHOT_ADD = "labeling.add_datasetsnapshot"
SNAPSHOT_EXPORT = "labeling.change_datasetsnapshot"


@admin.register(ClassSet)
class ClassSetAdmin(admin.ModelAdmin):
    """Editable: the form runs ``ClassSet.clean`` (classes a non-empty list of unique names)."""

    list_display = ["name", "class_count", "review_required", "gold_rate", "audit_rate", "snapshot_count", "created"]
    search_fields = ["name"]
    readonly_fields = ["created", "snapshots_link"]
    actions = ["snapshot", "recompute_priorities"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_snapshots=Count("snapshots"))

    def has_recompute_priorities_permission(self, request):
        return request.user.has_perm("labeling.change_labeltask")

    # The registry enqueues labeling.recompute_priorities when a version is promoted; this is the
    # same by hand (after changing LABELING_UNCERTAINTY, say).
    @admin.action(description="Recompute the priorities of pending tasks", permissions=["recompute_priorities"])
    def recompute_priorities(self, request, queryset):
        names = []
        for class_set in queryset:
            tasks.recompute_priorities.delay_on_commit(class_set.pk)
            names.append(class_set.name)
        text = f"Queued the rescoring of the pending tasks of {', '.join(names)}."
        self.message_user(request, text, messages.SUCCESS)

    @admin.display(description="classes")
    def class_count(self, obj):
        return len(obj.classes) if isinstance(obj.classes, list) else "—"

    @admin.display(description="snapshots", ordering="n_snapshots")
    def snapshot_count(self, obj):
        return changelist_link(DatasetSnapshot, str(obj.n_snapshots), class_set__id__exact=obj.pk)

    @admin.display(description="snapshots")
    def snapshots_link(self, obj):
        if obj.pk is None:
            return "—"
        return changelist_link(DatasetSnapshot, "Snapshots of this class set", class_set__id__exact=obj.pk)

    def has_snapshot_permission(self, request):
        return request.user.has_perm(SNAPSHOT_ADD)

    # A snapshot takes seconds to minutes: the action queues it (labeling.create_snapshot).
    @admin.action(description="Create a snapshot of this class set", permissions=["snapshot"])
    def snapshot(self, request, queryset):
        for class_set in queryset:
            made = request_snapshot(class_set, by=request.user, note="Created in the admin.")
            link = admin_change_link(SnapshotRequest, made.pk, f"request {made.pk}")
            self.message_user(
                request,
                format_html("Queued a snapshot of {} ({}): it joins the snapshots once built.", class_set.name, link),
                messages.SUCCESS,
            )


def snapshot_message(snapshot: DatasetSnapshot) -> str:
    text = f"{snapshot.class_set.name} v{snapshot.version}: {snapshot.item_count} item(s)."
    if snapshot.same_content_as_parent:
        text += f" Same content as v{snapshot.parent.version}: no label changed since."
    return text


@admin.register(SnapshotRequest)
class SnapshotRequestAdmin(ReadOnlyAdmin):
    """Snapshots asked for in the admin or the API, and how their build went. Seen by those who
    may see snapshots."""

    list_display = ["__str__", "class_set", "status", "snapshot_link", "requested_by", "created", "finished_at"]
    list_filter = ["status", "class_set"]
    list_select_related = ["class_set", "snapshot__class_set", "requested_by"]
    fields = [
        "class_set",
        "note",
        "requested_by",
        "created",
        "status",
        "snapshot_link",
        "outcome",
        "error",
        "finished_at",
    ]
    readonly_fields = fields

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(SNAPSHOT_VIEW)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    @admin.display(description="snapshot")
    def snapshot_link(self, obj):
        return admin_change_link(DatasetSnapshot, obj.snapshot_id, obj.snapshot) if obj.snapshot_id else "—"

    @admin.display(description="outcome")
    def outcome(self, obj):
        return snapshot_message(obj.snapshot) if obj.snapshot_id else "—"


# --- The queue --------------------------------------------------------------------------------


class LabelInline(admin.TabularInline):
    model = Label
    fields = ["value", "origin", "labeled_by", "device", "created", "undone_at", "review", "reviewed_by"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(LabelTask)
class LabelTaskAdmin(BigTableAdmin):
    list_display = [
        "id",
        "image_thumbnail",
        "status",
        "source",
        "class_set",
        "priority_display",
        "predicted_label",
        "confidence",
        "duplicate_count",
        "created",
    ]
    list_filter = ["status", "source", "class_set"]
    list_select_related = ["class_set"]
    raw_id_fields = ["device", "drift_sample", "incident", "duplicate_of", "leased_by"]
    search_fields = ["key"]
    search_help_text = "A task's exact key (e.g. prediction:<device>:<id>) or its number."
    # (class_set, -priority, id) on pending tasks serves the queue's own order once both filters are set.
    ordering_filters = ("status", "class_set")
    filtered_ordering = None
    exclude = ["features"]
    inlines = [LabelInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("features")  # kilobytes per row, never shown

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        by_key = queryset.filter(key=term)  # the unique index; a contains-search would scan
        return (by_key | queryset.filter(pk=int(term))) if term.isdigit() else by_key, False

    def get_ordering(self, request):
        params = request.GET
        if params.get("status__exact") == TaskStatus.PENDING and params.get("class_set__id__exact"):
            return ["-priority", "id"]
        return ["-pk"]

    def get_readonly_fields(self, request, obj=None):
        return [*(f.name for f in self.model._meta.fields if f.name != "features"), "image_preview"]

    @admin.display(description="image")
    def image_thumbnail(self, obj):
        return thumbnail(obj.image_area, obj.image_key, size=48)

    @admin.display(description="image")
    def image_preview(self, obj):
        return thumbnail(obj.image_area, obj.image_key, size=128)

    @admin.display(description="priority")
    def priority_display(self, obj):
        return f"{obj.priority:.3f}"


class LabelValueFilter(RecentValuesFilter):
    title = "value"
    parameter_name = "value"


@admin.register(Label)
class LabelAdmin(BigTableAdmin):
    list_display = ["created", "task_link", "value", "origin", "labeled_by", "review", "undone_at", "seconds"]
    list_display_links = ["created"]
    list_filter = ["origin", "review", LabelValueFilter]
    list_select_related = ["labeled_by"]
    raw_id_fields = ["task", "labeled_by", "device", "reviewed_by"]
    search_fields = ["=task__id"]
    search_help_text = "A task's number."
    ordering_filters = ()
    filtered_ordering = None

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return (queryset.filter(task_id=int(term)) if term.isdigit() else queryset.none()), False

    @admin.display(description="task")
    def task_link(self, obj):
        return admin_change_link(LabelTask, obj.task_id, f"task {obj.task_id}")


# --- Snapshots --------------------------------------------------------------------------------

EXPORT_COLOURS = {
    ExportStatus.PENDING: "#6c757d",
    ExportStatus.RUNNING: "#0d6efd",
    ExportStatus.DONE: "#198754",
    ExportStatus.FAILED: "#dc3545",
}


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "class_set",
        "version",
        "item_count",
        "parent_link",
        "short_hash",
        "export_badge",
        "download",
        "created",
        "created_by",
    ]
    list_filter = ["class_set", "export_status"]
    list_select_related = ["class_set", "parent", "created_by"]
    ordering = ["-created"]
    fields = [
        "class_set",
        "version",
        "parent_link",
        "created",
        "created_by",
        "note",
        "item_count",
        "items_link",
        "class_counts_display",
        "content_hash",
        "same_content",
        "export_badge",
        "download",
        "export_size_display",
        "export_sha256",
        "exported_at",
        "export_error",
    ]
    readonly_fields = fields
    actions = ["export"]

    def has_delete_permission(self, request, obj=None):
        # Only a leaf goes (a parent is protected); its items go with it in one statement.
        return request.user.is_superuser

    def get_deleted_objects(self, objs, request):
        """A summary instead of Django's list of every item to be deleted (there may be 100,000)."""
        objs = list(objs)
        children = DatasetSnapshot.objects.filter(parent__in=objs)
        protected = [f"{child} (its parent is {child.parent})" for child in children.select_related("parent")]
        items = SnapshotItem.objects.filter(snapshot__in=objs).count()
        deleted = [f"{obj} and its {obj.item_count} item(s){' and archive' if obj.export_key else ''}" for obj in objs]
        return deleted, {"dataset snapshots": len(objs), "snapshot items": items}, set(), protected

    def has_export_permission(self, request):
        return request.user.has_perm(SNAPSHOT_EXPORT)

    @admin.action(description="Export (tar.gz of images, labels.csv and manifest)", permissions=["export"])
    def export(self, request, queryset):
        queued = [snapshot for snapshot in queryset.select_related("class_set") if export.request_export(snapshot)]
        skipped = queryset.count() - len(queued)
        if queued:
            names = ", ".join(str(snapshot) for snapshot in queued)
            self.message_user(request, f"Queued the export of {names}.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} snapshot(s) already exported or exporting.", messages.WARNING
            )

    @admin.display(description="parent")
    def parent_link(self, obj):
        return admin_change_link(DatasetSnapshot, obj.parent_id, obj.parent) if obj.parent_id else "—"

    @admin.display(description="content hash")
    def short_hash(self, obj):
        return format_html('<code title="{}">{}</code>', obj.content_hash, obj.content_hash[:12])

    @admin.display(description="same content as its parent", boolean=True)
    def same_content(self, obj):
        return obj.same_content_as_parent

    @admin.display(description="items")
    def items_link(self, obj):
        return changelist_link(SnapshotItem, f"{obj.item_count} item(s)", snapshot__id__exact=obj.pk)

    @admin.display(description="class counts")
    def class_counts_display(self, obj):
        return pretty_json(obj.class_counts)

    @admin.display(description="export", ordering="export_status")
    def export_badge(self, obj):
        if not obj.export_status:
            return "—"
        badge = format_html(
            '<span style="color:#fff;background:{};border-radius:3px;padding:1px 6px">{}</span>',
            EXPORT_COLOURS.get(obj.export_status, "#6c757d"),
            obj.get_export_status_display(),
        )
        if obj.export_error:
            return format_html(
                '{} <span title="{}">{}</span>', badge, obj.export_error, Truncator(obj.export_error).chars(60)
            )
        return badge

    @admin.display(description="archive")
    def download(self, obj):
        url = export.download_url(obj)
        return format_html('<a href="{}">Download</a>', url) if url else "—"

    @admin.display(description="archive size")
    def export_size_display(self, obj):
        return "—" if obj.export_size is None else filesizeformat(obj.export_size)


class SnapshotFilter(admin.SimpleListFilter):
    """The latest snapshots, named in one query (each one's name is its class set's)."""

    title = "snapshot"
    parameter_name = "snapshot__id__exact"
    limit = 50

    def lookups(self, request, model_admin):
        latest = DatasetSnapshot.objects.select_related("class_set").order_by("-created")[: self.limit]
        return [(str(snapshot.pk), str(snapshot)) for snapshot in latest]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(snapshot_id=int(value)) if value.isdigit() else queryset.none()


class SnapshotItemLabelFilter(RecentValuesFilter):
    title = "label"
    parameter_name = "label"


@admin.register(SnapshotItem)
class SnapshotItemAdmin(BigTableAdmin):
    """Items are written once with their snapshot: read here, never changed, never deleted alone."""

    list_display = ["task_id", "image_thumbnail", "label", "origin", "predicted_label", "model_version", "snapshot"]
    list_display_links = ["task_id"]
    list_filter = [SnapshotFilter, "origin", SnapshotItemLabelFilter]
    list_select_related = ["snapshot__class_set"]
    search_fields = ["=task_id"]
    search_help_text = "A task's number."
    # The (snapshot, task_id) unique index serves a snapshot's items in task order.
    ordering_filters = ("snapshot",)
    filtered_ordering = ["snapshot", "task_id"]
    exclude = ["features"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("features")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return (queryset.filter(task_id=int(term)) if term.isdigit() else queryset.none()), False

    def get_readonly_fields(self, request, obj=None):
        return [*(f.name for f in self.model._meta.fields if f.name != "features"), "image_preview"]

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="image")
    def image_thumbnail(self, obj):
        return thumbnail(obj.image_area, obj.image_key, size=48)

    @admin.display(description="image")
    def image_preview(self, obj):
        return thumbnail(obj.image_area, obj.image_key, size=128)


# --- Prediction logs to the queue --------------------------------------------------------------
# devices' admin cannot import labeling (the app ladder); the action is added to it from here.


@admin.action(description="Queue for labeling", permissions=["queue_for_labeling"])
def queue_for_labeling(modeladmin, request, queryset):
    count = sources.enqueue_predictions(queryset)
    modeladmin.message_user(
        request, f"{count} prediction log(s) queued for labeling (already queued or without a class set: skipped)."
    )


def _add_prediction_log_action() -> None:
    from devices.models import PredictionLog

    model_admin = admin.site._registry.get(PredictionLog)
    if model_admin is None or queue_for_labeling in (model_admin.actions or []):
        return
    model_admin.actions = [*(model_admin.actions or []), queue_for_labeling]
    model_admin.has_queue_for_labeling_permission = lambda request: request.user.has_perm("labeling.add_labeltask")


_add_prediction_log_action()
