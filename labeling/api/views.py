"""Operator API of dataset snapshots: list and read them, ask for one, export one.

Sessions only (devices get 403): reading needs ``labeling.view_datasetsnapshot``, creating
``labeling.add_datasetsnapshot``, exporting ``labeling.change_datasetsnapshot``. Nothing edits
or deletes a snapshot here: it is immutable.

Creating is asynchronous (a snapshot of 100,000 labels takes seconds to minutes): ``POST
/snapshots/`` answers 202 with a snapshot request and its URL in ``Location``;
``GET /snapshot-requests/<id>/`` says pending, done (with the snapshot's URL) or failed (why).
"""

from __future__ import annotations

import django_filters
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from labeling import export
from labeling.api.serializers import SnapshotCreateSerializer, SnapshotRequestSerializer, SnapshotSerializer
from labeling.models import DatasetSnapshot, SnapshotRequest
from labeling.snapshots import request_snapshot
from sphere.permissions import IsOperator, OperatorModelPermissions

VIEW_PERMISSION = "labeling.view_datasetsnapshot"
EXPORT_PERMISSION = "labeling.change_datasetsnapshot"


class SnapshotFilter(django_filters.FilterSet):
    class_set = django_filters.CharFilter(field_name="class_set__name")

    class Meta:
        model = DatasetSnapshot
        fields = ["class_set", "export_status"]


class SnapshotViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    permission_classes = [IsOperator, OperatorModelPermissions]
    serializer_class = SnapshotSerializer
    queryset = DatasetSnapshot.objects.select_related("class_set", "parent", "created_by")
    filterset_class = SnapshotFilter

    def get_permissions(self):
        if self.action == "export":  # a POST, but it changes the export fields: not an "add"
            return [IsOperator()]
        return super().get_permissions()

    @extend_schema(request=SnapshotCreateSerializer, responses={202: SnapshotRequestSerializer})
    def create(self, request, *args, **kwargs):
        """Queue a snapshot (202): poll the request in ``Location`` until it is done or failed."""
        body = SnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        made = request_snapshot(data["class_set"], by=request.user, note=data["note"])
        made = SnapshotRequestViewSet.queryset.get(pk=made.pk)  # as it stands after commit
        location = request.build_absolute_uri(reverse("snapshotrequest-detail", args=[made.pk]))
        answer = SnapshotRequestSerializer(made, context=self.get_serializer_context()).data
        return Response(answer, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    @extend_schema(request=None, responses={202: SnapshotSerializer, 200: SnapshotSerializer})
    @action(detail=True, methods=["post"])
    def export(self, request, pk=None):
        """Queue the export (202); a done or running one is answered as it is (200)."""
        if not request.user.has_perm(EXPORT_PERMISSION):
            self.permission_denied(request, message=f"Requires the {EXPORT_PERMISSION} permission.")
        snapshot = self.get_object()
        queued = export.request_export(snapshot)
        snapshot = self._reload(snapshot)
        answer = status.HTTP_202_ACCEPTED if queued else status.HTTP_200_OK
        return Response(self.get_serializer(snapshot).data, status=answer)

    def _reload(self, snapshot: DatasetSnapshot) -> DatasetSnapshot:
        return self.get_queryset().get(pk=snapshot.pk)


class SeesSnapshots(permissions.BasePermission):
    """Requests are part of the snapshots: whoever may read snapshots may follow them."""

    message = f"Requires the {VIEW_PERMISSION} permission."

    def has_permission(self, request, view):
        return request.user.has_perm(VIEW_PERMISSION)


class SnapshotRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Snapshots asked for and how their build went: pending, done (see ``snapshot_url``) or
    failed (see ``error``)."""

    permission_classes = [IsOperator, SeesSnapshots]
    serializer_class = SnapshotRequestSerializer
    queryset = SnapshotRequest.objects.select_related("class_set", "requested_by")
    filterset_fields = ["status"]
