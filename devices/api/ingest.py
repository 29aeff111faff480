"""Device endpoints for prediction logs and package uploads (docs/device-protocol.md)."""

from __future__ import annotations

import django_filters
import orjson
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from devices.api import serializers
from devices.api.views import DeviceAPIView, OperatorViewSetMixin
from devices.ingest import predictions, processing, uploads
from devices.models import Package, PackageKind, PredictionLog


def json_response(data, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


class PredictionsView(DeviceAPIView):
    """``POST /api/v1/device/predictions``: a batch of up to 1,000 prediction logs.

    The body is read and checked here rather than by DRF's parser and serializers: a batch of
    1,000 must cost milliseconds (benchmarks/ingest.py)."""

    @property
    def max_body_bytes(self) -> int:
        return settings.PREDICTIONS_MAX_BODY_BYTES

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={
            200: OpenApiResponse(description='{"results": [{"id", "status": created|duplicate|rejected, "errors"?}]}'),
            400: OpenApiResponse(description="The envelope is wrong."),
            413: OpenApiResponse(description="Body too large."),
        },
    )
    def post(self, request):
        if request.content_type != "application/json":
            return json_response({"detail": "Content-Type must be application/json."}, status=415)
        try:
            records = predictions.parse_batch(request.body)
        except predictions.BatchError as exc:
            raise ParseError(str(exc)) from None
        return json_response({"results": predictions.ingest(request.auth, records)})


class PackagesView(DeviceAPIView):
    """``POST /api/v1/device/packages``: a tar.gz archive as the raw body (not multipart).

    The ASGI layer caps the body at PACKAGE_MAX_BYTES while it streams in; this view streams it
    on into the packages storage, hashing as it goes, then records the package and queues its
    processing. The archive's contents are checked by the worker, not here."""

    max_body_bytes = property(lambda self: settings.PACKAGE_MAX_BYTES)
    parser_classes = []

    @extend_schema(
        request={"application/gzip": {"type": "string", "format": "binary"}},
        parameters=[
            OpenApiParameter(
                "X-Package-Id", str, OpenApiParameter.HEADER, required=True, description="UUID (manifest id)"
            ),
            OpenApiParameter("X-Package-Kind", str, OpenApiParameter.HEADER, required=True, enum=PackageKind.values),
            OpenApiParameter("X-Package-Sha256", str, OpenApiParameter.HEADER, required=True, description="64 hex"),
        ],
        responses={
            201: OpenApiResponse(description='{"id", "status": "received"}: stored, processing queued.'),
            200: OpenApiResponse(description="A replay: this package is known with the same sha256."),
            400: OpenApiResponse(description="A header is missing or wrong, or the body's sha256 differs."),
            409: OpenApiResponse(description="This package id is known with another sha256."),
            413: OpenApiResponse(description="Over PACKAGE_MAX_BYTES."),
            415: OpenApiResponse(description="Not application/gzip."),
        },
    )
    def post(self, request):
        try:
            upload = uploads.check_headers(
                package_id=request.headers.get("X-Package-Id"),
                kind=request.headers.get("X-Package-Kind"),
                sha256=request.headers.get("X-Package-Sha256"),
                content_type=request.content_type,
            )
            received = uploads.receive_package(request.auth, upload, request._request)
        except uploads.UploadError as exc:
            return json_response({"detail": str(exc)}, status=exc.status)
        package = received.package
        answer = {"id": str(package.package_id), "status": package.status}
        return json_response(answer, status=201 if received.created else 200)


# --- Operator API -----------------------------------------------------------------------------


class PredictionLogFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")
    confidence_min = django_filters.NumberFilter(field_name="confidence", lookup_expr="gte")
    confidence_max = django_filters.NumberFilter(field_name="confidence", lookup_expr="lte")

    class Meta:
        model = PredictionLog
        fields = ["device", "model_version", "label", "since", "until", "confidence_min", "confidence_max"]


class PredictionLogViewSet(OperatorViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Prediction logs, newest first. Filter by device and time (``?device=&since=``), model
    version, label and confidence range: the queries the table's indexes serve."""

    serializer_class = serializers.PredictionLogSerializer
    queryset = PredictionLog.objects.all()
    filterset_class = PredictionLogFilter
    ordering = "-created"


class PackageFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")

    class Meta:
        model = Package
        fields = ["device", "status", "kind", "package_id", "since"]


class PackageViewSet(OperatorViewSetMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.PackageSerializer
    queryset = Package.objects.all()
    filterset_class = PackageFilter
    ordering = "-received_at"

    @extend_schema(request=None, responses={200: OpenApiResponse(description='{"queued": 0 or 1}')})
    @action(detail=True, methods=["post"])
    def reprocess(self, request, pk=None):
        if not request.user.has_perm("devices.change_package"):
            self.permission_denied(request, message="Requires the devices.change_package permission.")
        package = self.get_object()
        return Response({"queued": processing.reprocess(Package.objects.filter(pk=package.pk))})
