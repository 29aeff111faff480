"""Device endpoints for prediction logs and package uploads (docs/device-protocol.md)."""

from __future__ import annotations

import orjson
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError

from devices.api.views import DeviceAPIView
from devices.ingest import predictions, uploads
from devices.models import PackageKind


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
