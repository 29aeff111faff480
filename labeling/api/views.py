"""Operator API of dataset snapshots: list and read them, create one, export one.

Sessions only (devices get 403): reading needs ``labeling.view_datasetsnapshot``, creating
``labeling.add_datasetsnapshot``, exporting ``labeling.change_datasetsnapshot``. Nothing edits
or deletes a snapshot here: it is immutable.
"""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from labeling import export
from labeling.api.serializers import SnapshotCreateSerializer, SnapshotSerializer
from labeling.models import DatasetSnapshot
from labeling.snapshots import SnapshotError, create_snapshot
from sphere.permissions import IsOperator, OperatorModelPermissions

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

    @extend_schema(request=SnapshotCreateSerializer, responses={201: SnapshotSerializer})
    def create(self, request, *args, **kwargs):
        body = SnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            snapshot = create_snapshot(data["class_set"], by=request.user, note=data["note"])
        except SnapshotError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(self._reload(snapshot)).data, status=status.HTTP_201_CREATED)

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
