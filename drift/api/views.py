"""Device endpoints of the drift app: verdict acknowledgements and direct drift reports."""

from __future__ import annotations

import orjson
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError

from devices.api.ingest import json_response
from devices.api.views import DeviceAPIView
from drift import device_reports, verdicts


def _json_body(request):
    if request.content_type != "application/json":
        return None
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"Body is not valid JSON: {exc}") from None


class VerdictAcksView(DeviceAPIView):
    """``POST /api/v1/device/verdict-acks``: the device has applied these verdicts."""

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={200: OpenApiResponse(description='{"acknowledged": <n>}'), 400: None, 415: None},
    )
    def post(self, request):
        data = _json_body(request)
        if data is None:
            return json_response({"detail": "Content-Type must be application/json."}, status=415)
        try:
            acks = verdicts.parse_acks(data)
        except verdicts.VerdictError as exc:
            raise ParseError(str(exc)) from None
        return json_response({"acknowledged": verdicts.acknowledge(request.auth, acks)})


class DriftEventsView(DeviceAPIView):
    """``POST /api/v1/device/drift-events``: a drift event reported directly (without a package),
    with its samples' predictions and features but no images (those need a package)."""

    max_body_bytes = 1024 * 1024

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={
            201: OpenApiResponse(description='{"id", "status": "created", "samples": {"created", "duplicate"}}'),
            200: OpenApiResponse(description="A replay: the event was already stored."),
            400: None,
            415: None,
        },
    )
    def post(self, request):
        data = _json_body(request)
        if data is None:
            return json_response({"detail": "Content-Type must be application/json."}, status=415)
        try:
            result = device_reports.report_event(request.auth, data)
        except device_reports.ReportError as exc:
            return json_response({"detail": str(exc)}, status=400)
        return json_response(result, status=201 if result["status"] == "created" else 200)
