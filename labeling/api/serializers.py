from django.urls import reverse
from rest_framework import serializers

from labeling import export
from labeling.models import ClassSet, DatasetSnapshot, SnapshotRequest
from sphere.api import StrictCharField


class SnapshotSerializer(serializers.ModelSerializer):
    class_set = serializers.SlugRelatedField(slug_field="name", read_only=True)
    parent_version = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    same_content_as_parent = serializers.BooleanField(
        read_only=True, help_text="No label changed since the parent: the items hash alike."
    )
    download_url = serializers.SerializerMethodField(help_text="The archive, once exported (operators' session).")

    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "class_set",
            "version",
            "parent",
            "parent_version",
            "content_hash",
            "same_content_as_parent",
            "item_count",
            "class_counts",
            "note",
            "created",
            "created_by",
            "export_status",
            "export_size",
            "export_sha256",
            "export_error",
            "exported_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_parent_version(self, obj) -> int | None:
        return obj.parent.version if obj.parent_id else None

    def get_download_url(self, obj) -> str | None:
        url = export.download_url(obj)
        request = self.context.get("request")
        return request.build_absolute_uri(url) if url and request else url


class SnapshotCreateSerializer(serializers.Serializer):
    class_set = serializers.SlugRelatedField(slug_field="name", queryset=ClassSet.objects.all())
    note = StrictCharField(required=False, default="", allow_blank=True, max_length=2000)


class SnapshotRequestSerializer(serializers.ModelSerializer):
    class_set = serializers.SlugRelatedField(slug_field="name", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    snapshot_url = serializers.SerializerMethodField(help_text="The snapshot, once the request is done.")

    class Meta:
        model = SnapshotRequest
        fields = [
            "id",
            "class_set",
            "note",
            "status",
            "snapshot",
            "snapshot_url",
            "error",
            "created",
            "requested_by",
            "finished_at",
        ]
        read_only_fields = fields

    def get_snapshot_url(self, obj) -> str | None:
        if obj.snapshot_id is None:
            return None
        url = reverse("datasetsnapshot-detail", args=[obj.snapshot_id])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url
